"""Exception and warning hierarchy.

Every error ctframe raises on purpose derives from :class:`CTFrameError` and also
from the builtin exception that fits, so ``except ValueError`` keeps working.
Messages say what is wrong, where (a file path or a series UID, never a patient
name) and how to fix it.

An exception that is not a :class:`CTFrameError` is a bug in ctframe (or in a
library under it), never a verdict on the input: the command line reports it as
an internal error (exit status 1) and :func:`ctframe.scan` stops on it instead of
listing the file as a problem. Errors of the operating system about the user's
own paths (a missing or unreadable file, a full disk) stay ``OSError``.

:class:`DicomReadError` is a ``ValueError`` (the content of a file is bad), not
an ``OSError``: ctframe's own ``except OSError`` around a read must never catch
(and wrap a second time) the error it raised itself.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator

__all__ = [
    "CTFrameError",
    "CTFrameWarning",
    "CohortWarning",
    "ConfigError",
    "DicomReadError",
    "GridMismatchError",
    "InconsistentSeriesError",
    "MultipleSeriesError",
    "NoSeriesError",
    "NotHUCalibratedError",
    "OutputExistsError",
    "ParameterError",
    "PerformanceWarning",
    "QCWarning",
    "ScanWarning",
    "ShortStackError",
    "UnsupportedDicomError",
]


class CTFrameError(Exception):
    """Base class of every error raised by ctframe on purpose."""


class DicomReadError(CTFrameError, ValueError):
    """A file cannot be read or decoded as DICOM (missing, unreadable, truncated, corrupt or changed)."""


class UnsupportedDicomError(CTFrameError, ValueError):
    """A DICOM file is valid but holds something ctframe cannot open as a CT volume."""


class NoSeriesError(CTFrameError, FileNotFoundError):
    """No usable image series was found where one was expected."""


class MultipleSeriesError(CTFrameError, ValueError):
    """A source holds several series (or stacks) where exactly one was expected."""


class InconsistentSeriesError(CTFrameError, ValueError):
    """The files of one series disagree (shape, orientation, duplicate positions...)."""


class GridMismatchError(InconsistentSeriesError):
    """A mask or label file does not lie on the voxel grid of the series it is read for."""


class NotHUCalibratedError(CTFrameError, ValueError):
    """Stored values cannot be mapped to Hounsfield units."""


class ShortStackError(CTFrameError, ValueError):
    """A stack too short along the head-foot axis for lung segmentation (lung values: NaN with this reason)."""


class SourceError(CTFrameError, OSError):
    """A source cannot be reached or refuses access (unreachable server, 401/403, retries exhausted)."""


class ConfigError(CTFrameError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class OutputExistsError(CTFrameError, FileExistsError):
    """An output path exists and overwriting was not requested."""


class ParameterError(CTFrameError, ValueError):
    """An argument is invalid: unknown name, out of range, or in conflict with another argument or the data."""


class CTFrameWarning(UserWarning):
    """Base class of ctframe's warnings."""


class ScanWarning(CTFrameWarning):
    """Some files were skipped during discovery; see the problems table."""


class PerformanceWarning(CTFrameWarning):
    """Work runs slower than it could (e.g. the header scan could not use its worker processes)."""


class CohortWarning(CTFrameWarning):
    """A stack of a cohort was skipped; the rest of the cohort goes on."""


class QCWarning(CTFrameWarning):
    """A series opened, but its geometry or encoding deserves attention."""


@contextlib.contextmanager
def library_warnings_ignored() -> Iterator[None]:
    """Ignore the warnings of libraries ctframe calls (pydicom's, on every odd value) inside the block.

    Odd values surface as NaN fields or problem rows instead. ``warnings.catch_warnings``
    changes process-wide filters and is not thread-safe: two threads leaving it out of
    order restore each other's state, and every warning of the process can end up
    ignored for good. So the filter changes only in the main thread; ctframe's own
    reading threads run inside one such block entered by the thread that started them,
    and elsewhere (a caller's threads, dask's) library warnings pass through as they are.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
