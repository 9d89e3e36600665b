"""The bad-input contract shared by the bad-input suite and the fuzz tests.

For any file or folder, :func:`check_api` asserts what ctframe promises:

* ``scan`` never raises on an existing root; every file under it is either a
  catalog row or a problems row with a reason (never both);
* ``open_series`` + ``to_hu`` + ``.compute()`` either work or raise a
  ``CTFrameError`` whose message names a file, the source or a series;
* warnings raised from ctframe's own code are ``CTFrameWarning`` subclasses;
* no other exception escapes, and each call ends within a time limit.

:func:`check_cli` asserts the command-line half: exit status 0 or 2, at most
one ``ctframe: error:`` line, never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

import ctframe
from ctframe.cli import app
from ctframe.errors import CTFrameError, CTFrameWarning, NotHUCalibratedError
from ctframe.scan import iter_files

CTFRAME_DIR = os.path.dirname(ctframe.__file__)
runner = CliRunner()


class CallTimeout(BaseException):
    """A ctframe call ran past its time limit.

    A BaseException, so that no `except Exception` inside ctframe can swallow it.
    """


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Fail when the block runs longer than `seconds` (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise CallTimeout(f"{what} ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Outcome:
    """What happened to one input, for assertions specific to a case."""

    catalog: pd.DataFrame
    problems: pd.DataFrame
    error: CTFrameError | None = None  # from open_series / to_hu / compute
    stage: str = ""  # "open", "hu" or "compute" when error is set; "" when everything worked
    hu: np.ndarray | None = None
    volume: object = None
    warnings: list[warnings.WarningMessage] = field(default_factory=list)

    @property
    def ctframe_warnings(self) -> list[str]:
        return [f"{w.category.__name__}: {w.message}" for w in self.warnings if issubclass(w.category, CTFrameWarning)]


def _names_something(message: str, root: Path, catalog: pd.DataFrame) -> bool:
    """Whether an error message says where: the root, a file under it, or a series/stack of it."""
    candidates = {str(root), *map(str, iter_files(root))} if root.exists() else {str(root)}
    if len(catalog):
        candidates |= set(catalog["series_uid"].astype(str)) | set(catalog["stack_key"].astype(str))
    return any(c and c in message for c in candidates)


def check_api(root: str | os.PathLike[str], *, timeout_s: float = 30.0, series: str | None = None) -> Outcome:
    """Run scan, open_series, to_hu and compute on `root` and assert the contract."""
    root = Path(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with time_limit(timeout_s, f"scan({root})"):
            catalog = ctframe.scan(root, progress=False)
        problems = ctframe.problems_table(catalog)
        outcome = Outcome(catalog=catalog, problems=problems)
        files = set(iter_files(root))
        catalogued, skipped = set(catalog["path"]), set(problems["path"])
        assert catalogued | skipped == files, f"unclassified files: {sorted(files - catalogued - skipped)}"
        assert not catalogued & skipped, f"both catalogued and skipped: {sorted(catalogued & skipped)}"
        assert problems["reason"].str.strip().str.len().gt(0).all(), problems
        stage = "open"
        try:
            with time_limit(timeout_s, f"open_series({root})"):
                volume = ctframe.open_series(root, series=series)
                outcome.volume = volume
                stage = "hu"
                hu = ctframe.to_hu(volume)
                stage = "compute"
                values = hu.compute(scheduler="synchronous").values
            assert values.dtype == np.float32 and values.shape == volume.shape
            outcome.hu = values
        except NotHUCalibratedError as exc:  # still readable as stored values: compute those
            outcome.error, outcome.stage = exc, stage
            if stage == "hu":
                try:
                    with time_limit(timeout_s, f"compute stored {root}"):
                        outcome.volume.compute(scheduler="synchronous")  # type: ignore[attr-defined]
                except CTFrameError as inner:
                    outcome.error, outcome.stage = inner, "compute"
        except CTFrameError as exc:
            outcome.error, outcome.stage = exc, stage
    outcome.warnings = list(caught)
    if outcome.error is not None:
        message = str(outcome.error)
        assert message.strip(), f"{type(outcome.error).__name__} without a message"
        assert _names_something(message, root, catalog), f"error names no file or series: {message}"
    for w in caught:
        if os.path.abspath(w.filename).startswith(CTFRAME_DIR):
            assert issubclass(w.category, CTFrameWarning), f"undocumented warning from ctframe: {w.category}: {w}"
    return outcome


def check_cli(args: list[str], *, ok_codes: tuple[int, ...] = (0, 2)) -> tuple[int, str]:
    """Invoke the CLI in-process and assert: allowed exit status, one error line at most, no traceback."""
    result = runner.invoke(app, args)
    output = result.output  # stdout and stderr, interleaved as a user sees them
    assert result.exit_code in ok_codes, f"exit {result.exit_code} for {args}:\n{output}\n{result.exception!r}"
    assert "Traceback" not in output, output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in output.splitlines() if line.startswith("ctframe: error:")]
    if result.exit_code == 0:
        assert not errors, output
    else:
        assert len(errors) == 1, output
        assert errors[0] == result.stderr.strip().splitlines()[-1], result.stderr
    return result.exit_code, output
