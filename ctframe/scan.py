"""Discovery: headers of a folder tree into a catalog, and series grouping with QC.

:func:`scan` reads headers only (never pixel data), in parallel processes for
large trees, and returns the *catalog*: a DataFrame with one row per image frame.
:func:`series_table` groups the catalog into *stacks* (a series split by
orientation and, where positions repeat, by acquisition), orders slices along
the slice normal and flags what deserves a look.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import errno
import hashlib
import multiprocessing
import os
import queue
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ctframe.calibration import calibration_of_rows
from ctframe.config import get_config
from ctframe.dicom import read_header
from ctframe.errors import (
    CTFrameError,
    NoSeriesError,
    PerformanceWarning,
    ScanWarning,
    SourceError,
    library_warnings_ignored,
)
from ctframe.geometry import ORIENTATION_COLUMNS, POSITION_COLUMNS, orientation_groups, stack_geometry
from ctframe.privacy import resolve_salt
from ctframe.sources import Access, is_remote, list_files, local_path, location_kind, redact

__all__ = ["assign_stacks", "iter_files", "problems_table", "scan", "series_table"]

#: Catalog columns in order (PHI columns are appended only with include_phi=True).
CATALOG_COLUMNS: tuple[str, ...] = (
    "path", "file_size", "mtime_ns", "file_version", "frame", "number_of_frames",
    "patient_key", "study_uid", "study_date", "study_time", "study_datetime",
    "series_uid", "series_number", "series_description", "acquisition_number",
    "modality", "sop_class_uid", "sop_class", "sop_instance_uid", "instance_number", "image_type",
    "frame_of_reference_uid",
    "position_x_mm", "position_y_mm", "position_z_mm",
    "row_dir_x", "row_dir_y", "row_dir_z", "col_dir_x", "col_dir_y", "col_dir_z",
    "pixel_spacing_row_mm", "pixel_spacing_col_mm", "slice_thickness_mm",
    "rows", "columns", "samples_per_pixel", "photometric",
    "bits_allocated", "bits_stored", "pixel_representation",
    "rescale_slope", "rescale_intercept", "rescale_type", "padding_value", "padding_range_limit",
    "window_center", "window_width", "voi_lut_function",
    "transfer_syntax_uid", "transfer_syntax", "is_compressed", "is_lossy", "pixel_data_offset",
    "convolution_kernel", "kvp", "gantry_tilt_deg", "manufacturer", "manufacturer_model", "body_part",
)  # fmt: skip
#: Identifying columns of a catalog scanned with include_phi=True: never in series_table or any written table,
#: only in ctframe.linkage_table (see ctframe.privacy).
PHI_COLUMNS: tuple[str, ...] = (
    "patient_id", "patient_name", "patient_birth_date", "accession_number",
    "institution_name", "referring_physician_name", "original_study_uid", "original_series_uid",
    "original_sop_instance_uid", "original_frame_of_reference_uid", "original_study_date", "original_study_time",
)  # fmt: skip
STACK_COLUMNS: tuple[str, ...] = ("stack_key", "slice_position_mm")
#: Columns of the series table, in order.
SERIES_COLUMNS: tuple[str, ...] = (
    "stack_key", "series_uid", "patient_key", "study_uid", "study_date", "study_datetime", "series_number",
    "series_description", "folder", "modality", "orientation", "n_files", "n_slices", "rows", "columns",
    "pixel_spacing_row_mm", "pixel_spacing_col_mm", "slice_thickness_mm", "spacing_median_mm", "spacing_min_mm",
    "spacing_max_mm", "n_missing_slices", "tilt_angle_deg", "gantry_tilt_deg", "convolution_kernel", "kvp",
    "manufacturer", "manufacturer_model", "transfer_syntax", "has_duplicates", "has_gaps", "irregular_spacing",
    "is_tilted", "rescale_varies", "is_compressed", "is_lossy", "is_non_ct", "is_localizer", "inconsistent_shape",
    "inconsistent_pixel_spacing", "inconsistent_orientation", "missing_geometry", "not_hu_calibrated", "usable",
    "calibration_issue", "qc_notes",
)  # fmt: skip
LOCALIZER_TYPES = frozenset({"LOCALIZER", "SCOUT", "SURVIEW", "TOPOGRAM", "SCANOGRAM"})


# --------------------------------------------------------------------------- walking


def iter_files(root: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> Iterator[str]:
    """Yield every regular file under `root` (a file, a folder or several), sorted.

    Symbolic links to folders are followed once; a link loop is not followed
    again, so the walk always ends.

    Raises
    ------
    NoSeriesError
        A root does not exist.
    """
    roots = [root] if isinstance(root, str | os.PathLike) else list(root)
    seen_dirs: set[str] = set()
    for item in roots:
        item = os.fspath(item)
        if os.path.isfile(item):
            yield item
            continue
        if not os.path.isdir(item):
            if os.path.islink(item) and not os.path.exists(item):
                raise NoSeriesError(f"{item}: a broken symbolic link (or a link loop); check the path")
            if os.path.exists(item):
                raise NoSeriesError(f"{item}: neither a regular file nor a folder (a FIFO, socket or device)")
            raise NoSeriesError(f"{item}: no such file or folder; check the path")
        for dirpath, dirnames, filenames in os.walk(item, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen_dirs:
                dirnames[:] = []
                continue
            seen_dirs.add(real)
            dirnames.sort()
            for name in sorted(filenames):
                yield os.path.join(dirpath, name)


def catalog_columns(include_phi: bool) -> list[str]:
    """The catalog's columns in order (with the identifying ones when `include_phi`)."""
    return list(CATALOG_COLUMNS) + (list(PHI_COLUMNS) if include_phi else [])


def _read_batch(
    paths: Sequence[str], salt: str, include_phi: bool, access: Access | None = None
) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """The catalog rows of a batch of files, as a DataFrame, and the files skipped.

    A :class:`~ctframe.errors.CTFrameError` (not DICOM, corrupt, no pixel
    data...) makes the file a problem row. Any other exception is a bug in
    ctframe and stops the scan, with a note naming the file that triggered it.
    A DataFrame per batch keeps a large scan's memory flat (a record dict per
    file would pile up until the end) and pickles compactly from worker processes.
    """
    records: list[dict[str, Any]] = []
    problems: list[dict[str, str]] = []
    for path in paths:
        try:
            records.extend(read_header(path, salt=salt, include_phi=include_phi, access=access))
        except SourceError:  # the source itself failed (unreachable, access denied): not one bad file
            raise
        except CTFrameError as exc:
            problems.append({"path": path, "reason": _reason(exc, redact(path))})
        except Exception as exc:
            exc.add_note(f"while ctframe.scan read the header of {path}")
            raise
    return pd.DataFrame.from_records(records, columns=catalog_columns(include_phi)), problems


def _reason(exc: Exception, path: str) -> str:
    text = str(exc)
    return text[len(path) + 2 :] if text.startswith(path + ": ") else text


def _batches(paths: Sequence[str], size: int) -> list[Sequence[str]]:
    return [paths[i : i + size] for i in range(0, len(paths), size)]


# --------------------------------------------------------------------------- worker processes
#
# Header reading is GIL-bound, so large trees are read by worker processes. The
# pool is started once per process and kept for later scans (closed at exit).
# Its workers are started by fork while the calling process runs a single thread
# (milliseconds; a fork beside other threads may deadlock the child), and
# otherwise (a notebook kernel, after a dask compute) as fresh interpreters
# running ``python -c`` code that imports ctframe.scan: never the caller's
# ``__main__``, so a script without an ``if __name__ == "__main__"`` guard runs
# once. Each worker talks to the caller over a socket pair (pickled batches in,
# catalog frames out). While fresh interpreters still import ctframe (a second
# or two), the caller reads batches itself, so starting the pool never makes a
# scan slower than reading in-process; later scans find the workers ready.

#: Code a worker started by exec runs: take sys.path from the caller, then serve.
_BOOT = (
    "import sys\n"
    "from multiprocessing.connection import Connection\n"
    "conn = Connection(int(sys.argv[1]))\n"
    "sys.path[:] = conn.recv()\n"
    "from ctframe.scan import _serve\n"
    "_serve(conn)\n"
)


#: Seconds a worker started by exec may take to import ctframe before the pool counts as broken.
_BOOT_TIMEOUT_S = 120
#: Batches sent to a worker ahead of its answers (so it never waits for the caller between batches).
_IN_FLIGHT = 2


class _WorkerFailure(Exception):
    """An exception from a worker process that could not be sent back as itself."""


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process (shown as its cause)."""

    def __str__(self) -> str:
        return f'\n"""\n{self.args[0]}"""'


def _serve(conn: Any) -> None:
    """Worker loop: answer each batch request on `conn` until the caller closes it."""
    import signal
    import traceback

    from ctframe.config import config_context

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    try:
        conn.send(("ready", os.getpid()))
        while True:
            try:
                cwd, cfg, paths, salt, include_phi = conn.recv()
            except EOFError:  # the caller closed the pool, or exited
                return
            try:
                if os.getcwd() != cwd:  # relative paths are the caller's
                    os.chdir(cwd)
                with config_context(cfg):
                    reply: tuple[Any, ...] = ("ok", _read_batch(paths, salt, include_phi))
            except Exception as exc:
                reply = ("error", exc, traceback.format_exc())
            try:
                conn.send(reply)
            except Exception as exc:  # an exception pickle cannot carry: send its class and text
                if reply[0] != "error":
                    raise
                error = _WorkerFailure(f"{type(reply[1]).__name__}: {reply[1]} ({type(exc).__name__} sending it back)")
                conn.send(("error", error, reply[2]))
    except (BrokenPipeError, ConnectionResetError):  # the caller has gone
        return


def _serve_forked(conn: Any, inherited: list[int]) -> None:
    """Entry point of a forked worker: close the caller's ends of every pool connection first.

    Otherwise a worker would keep another worker's connection open and neither
    would see the caller exit.
    """
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)
    _serve(conn)


class _Worker:
    """One worker process and the caller's end of its connection."""

    def __init__(self, conn: Any, process: Any, how: str) -> None:
        self.conn, self.process, self.how = conn, process, how
        self.pid: int | None = None  # known once the worker says it is ready

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()  # the worker sees EOF and exits
        process = self.process
        if isinstance(process, subprocess.Popen):
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        else:
            process.join(timeout=2)
            if process.is_alive():
                process.kill()
                process.join()


class _Pool:
    """The header-reading worker processes of this process."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.workers: list[_Worker] = []
        self.busy = threading.Lock()

    def grow(self, n: int) -> None:
        while len(self.workers) < n:
            self.workers.append(self._start())

    def _start(self) -> _Worker:
        parent, child = multiprocessing.Pipe()
        try:
            if sys.platform.startswith("linux") and threading.active_count() == 1:
                inherited = [parent.fileno()] + [w.conn.fileno() for w in self.workers if not w.conn.closed]
                process: Any = multiprocessing.get_context("fork").Process(
                    target=_serve_forked, args=(child, inherited), name="ctframe-scan-worker", daemon=True
                )
                process.start()
                how = "fork"
            else:
                if not sys.executable:  # an embedded interpreter
                    raise OSError(errno.ENOEXEC, "no Python executable to start (sys.executable is empty)")
                process = subprocess.Popen(
                    [sys.executable, "-c", _BOOT, str(child.fileno())],
                    pass_fds=(child.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                )
                parent.send(list(sys.path))
                how = "exec"
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        return _Worker(parent, process, how)

    def close(self) -> None:
        workers, self.workers = self.workers, []
        for worker in workers:
            worker.close()


_pool: _Pool | None = None
_pool_lock = threading.Lock()
_warned: set[str] = set()


def _get_pool() -> _Pool:
    global _pool
    with _pool_lock:
        if _pool is None or _pool.owner != os.getpid():  # none yet, or inherited by a fork of this process
            _pool = _Pool()
        return _pool


def _discard_pool(pool: _Pool) -> None:
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None
    pool.close()


@atexit.register
def _close_pool() -> None:
    """Stop the worker processes (at exit; tests call it to start from a cold pool)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None and pool.owner == os.getpid():
        pool.close()


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"ctframe.scan reads headers in this process only: {reason}", PerformanceWarning, stacklevel=4)


def _read_in_pool(
    pool: _Pool,
    batches: list[Sequence[str]],
    n_workers: int,
    salt: str,
    include_phi: bool,
    frames: list[pd.DataFrame],
    problems: list[dict[str, str]],
    bar: Any,
) -> tuple[dict[int, int], int, str | None]:
    """Read `batches` with the pool's workers (and in this process while none is ready).

    Returns the files read per worker PID, the batches this process read, and
    why the pool broke (None if it did not). A worker that dies leaves its batch
    to the others; an exception from ctframe's code in a worker is raised here,
    once the batches in flight have come back (so no stale answer is left in a
    connection), with the worker's traceback as its cause.
    """
    cwd, cfg = os.getcwd(), get_config()
    todo = collections.deque(enumerate(batches))
    lock = threading.Lock()
    results: queue.SimpleQueue[tuple[str, Any, Any]] = queue.SimpleQueue()
    ready = threading.Event()
    stop = threading.Event()

    def take() -> tuple[int, Sequence[str]] | None:
        with lock:
            return todo.popleft() if todo and not stop.is_set() else None

    def serve(worker: _Worker) -> None:
        inflight: collections.deque[tuple[int, Sequence[str]]] = collections.deque()
        deadline = time.monotonic() + _BOOT_TIMEOUT_S
        try:
            while worker.pid is None:  # a fresh interpreter still importing ctframe
                if worker.conn.poll(0.02):
                    worker.pid = worker.conn.recv()[1]
                elif stop.is_set() or not todo:
                    return
                elif time.monotonic() > deadline:
                    raise TimeoutError(f"a worker process did not start within {_BOOT_TIMEOUT_S} s")
            ready.set()
            while True:  # a batch waits in the worker while it reads another: no idle round trip
                while len(inflight) < _IN_FLIGHT and (item := take()) is not None:
                    inflight.append(item)  # before sending: a send to a dead worker must not lose it
                    worker.conn.send((cwd, cfg, item[1], salt, include_phi))
                if not inflight:
                    return
                reply = worker.conn.recv()
                results.put((reply[0], inflight.popleft(), (worker.pid, *reply[1:])))
                if reply[0] == "error":
                    stop.set()  # nothing more is sent; what is in flight is still read
        except (EOFError, OSError) as exc:  # the worker died: its batches go back to the queue
            with lock:
                todo.extendleft(inflight)
            results.put(("broken", None, f"a worker process ended ({type(exc).__name__}: {exc})"))

    threads = [threading.Thread(target=serve, args=(w,), daemon=True) for w in pool.workers[:n_workers]]
    for thread in threads:
        thread.start()
    per_worker: dict[int, int] = {}
    in_caller, broken, error = 0, None, None
    try:
        while any(t.is_alive() for t in threads) or not results.empty():
            if not ready.is_set() and (item := take()) is not None:  # no worker ready yet: read here
                frame, probs = _read_batch(item[1], salt, include_phi)
                results.put(("ok", item, (os.getpid(), (frame, probs))))
                in_caller += 1
            try:
                kind, item, payload = results.get(timeout=0.05)
            except queue.Empty:
                continue
            if kind == "broken":
                broken = broken or payload
                continue
            if kind == "error":
                error = error or payload
                continue
            pid, (frame, probs) = payload
            frames.append(frame)
            problems.extend(probs)
            if pid != os.getpid():
                per_worker[pid] = per_worker.get(pid, 0) + len(item[1])
            bar.update(len(item[1]))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
        if any(t.is_alive() for t in threads):  # interrupted with batches in flight: answers would go stale
            _discard_pool(pool)
    if error is not None:
        pid, exc, remote = error
        exc.add_note(f"raised in scan worker process {pid}")
        exc.__cause__ = _RemoteTraceback(remote)
        raise exc
    for _, batch in todo:  # every worker died: what is left is read here
        frame, probs = _read_batch(batch, salt, include_phi)
        frames.append(frame)
        problems.extend(probs)
        bar.update(len(batch))
    return per_worker, in_caller, broken


def _progress(total: int, enabled: bool | None, desc: str) -> Any:
    from tqdm import tqdm  # the text bar: tqdm.auto warns in Jupyter without ipywidgets

    class Bar(tqdm):  # type: ignore[misc, valid-type]
        monitor_interval = 0  # no monitor thread: it would make forking unsafe

    return Bar(total=total, desc=desc, unit="file", disable=(None if enabled is None else not enabled), leave=False)


def _scan_in_processes(
    paths: list[str],
    n_workers: int,
    cfg: dict[str, Any],
    salt: str,
    include_phi: bool,
    frames: list[pd.DataFrame],
    problems: list[dict[str, str]],
    bar: Any,
) -> tuple[str, tuple[int, ...], bool]:
    """Read `paths` with the worker pool when it is worth it and can be had.

    Returns the scan mode (``"processes:N (fork)"``, ``"processes:N (exec)"`` or
    ``"in-process: <reason>"``),
    the PIDs of the workers that read files, and whether the files were read
    (False: the caller reads them). A pool that cannot start or breaks is said once,
    with its reason, as a :class:`~ctframe.errors.PerformanceWarning`.
    """
    threshold = cfg["min_files_for_processes"]
    if n_workers <= 1:
        return f"in-process: workers={n_workers}", (), False
    if len(paths) < threshold:
        return f"in-process: {len(paths)} files, fewer than scan.min_files_for_processes ({threshold})", (), False
    if os.name != "posix":  # pragma: no cover - the CI runs Linux
        reason = "worker processes need a POSIX system (socket pairs passed to a child)"
        _warn_once(reason)
        return f"in-process: {reason}", (), False
    pool = _get_pool()
    if not pool.busy.acquire(blocking=False):
        return "in-process: the worker processes are busy with another scan in this process", (), False
    try:
        try:
            pool.grow(n_workers)
        except OSError as exc:
            _discard_pool(pool)
            reason = f"worker processes could not start ({type(exc).__name__}: {exc})"
            _warn_once(reason)
            return f"in-process: {reason}", (), False
        batches = _batches(paths, max(16, min(256, len(paths) // (n_workers * 8) or 1)))
        per_worker, in_caller, broken = _read_in_pool(
            pool, batches, n_workers, salt, include_phi, frames, problems, bar
        )
        started_by = sorted({w.how for w in pool.workers if w.pid in per_worker})
    finally:
        pool.busy.release()
    if broken is not None:
        _discard_pool(pool)  # the next scan starts a fresh pool
        _warn_once(f"{broken}; its files were read by the others, and the next scan starts new workers")
    if not per_worker:
        return "in-process: the worker processes were still starting; they serve the next scans", (), True
    mode = f"processes:{len(per_worker)} ({', '.join(started_by)})"
    if in_caller:
        mode += f" (and {in_caller} batch(es) in this process while they started)"
    return mode, tuple(sorted(per_worker)), True


def scan(
    root: Any,
    *,
    salt: str | None = None,
    include_phi: bool = False,
    workers: int | None = None,
    progress: bool | None = None,
    storage_options: dict[str, Any] | None = None,
    catalog: str | os.PathLike[str] | None = None,
    warn_skipped: bool = True,
) -> pd.DataFrame:
    """Discover the DICOM image files of a source from their headers.

    Parameters
    ----------
    root : location, iterable of locations, or DICOMwebClient
        A folder tree or a file; an fsspec URL (``s3://bucket/prefix``,
        ``gs://...``, ``https://...``, ``file://...``); a DICOMweb service root
        ``dicomweb+http(s)://host:port/path`` optionally narrowed by QIDO-RS
        query parameters (``?PatientID=...&Modality=CT``); a
        ``dicomweb_client.DICOMwebClient``; or several of these (see
        :mod:`ctframe.sources`).
    salt : str, optional
        Key of the patient pseudonym (see :mod:`ctframe.privacy`).
    include_phi : bool
        Add PatientID, name, birth date, accession number, institution,
        referring physician and the original UIDs and study date and time
        (``PHI_COLUMNS``), for :func:`ctframe.linkage_table`. Off by default:
        the catalog is de-identified (pseudonymous patient keys and UIDs, dates
        moved per patient; see :mod:`ctframe.privacy`) and safe to share.
    workers : int, optional
        Header-reading processes. Default from ``scan.workers`` (0: one per CPU);
        small trees (``scan.min_files_for_processes``) are read in-process. The
        worker processes are started by the first large scan and kept for the
        next ones; they are safe beside threads (a notebook kernel, dask) and
        never re-run the caller's ``__main__``. Remote headers are read by
        threads (the work is waiting on the network).
    progress : bool, optional
        Show a progress bar; the default shows one on a terminal for large trees.
    storage_options : dict, optional
        Options of the fsspec filesystem of remote URLs (credentials,
        ``{"anon": True}``, ``{"client_kwargs": {"endpoint_url": ...}}``). By
        default credentials come the usual way for the filesystem (environment,
        config files). Never shown in reprs, task keys or errors.
    catalog : path-like, optional
        A Parquet file that persists the catalog (see
        :mod:`ctframe.catalog_store`): when it exists, only files that are new
        or changed since it was written are read, files that are gone are
        dropped, and ``catalog.attrs["scan_changes"]`` counts them; it is then
        written anew (whole or not at all).
    warn_skipped : bool
        Say in a ScanWarning how many files were skipped and why (the default).
        Callers that report the problems their own way turn it off instead of
        filtering the warning: filters are process-wide and not thread-safe.

    Returns
    -------
    DataFrame
        The catalog: one row per image frame (single-frame files give one row;
        enhanced multi-frame files one per frame) with the columns of
        ``CATALOG_COLUMNS`` plus ``stack_key`` and ``slice_position_mm``
        (see :func:`assign_stacks`), sorted by stack and slice position.
        The files that are not DICOM images or could not be read are kept in
        ``catalog.attrs["problems"]``; :func:`problems_table` turns them into a
        DataFrame (path, reason). ``catalog.attrs["scan_mode"]`` says how the
        headers were read (``"processes:N (fork)"`` or ``"processes:N (exec)"``:
        N worker processes, started by fork or as fresh interpreters;
        ``"threads:N"`` for remote files; or ``"in-process: <reason>"``),
        ``catalog.attrs["scan_worker_pids"]`` which worker processes read them
        and ``catalog.attrs["access"]`` how read tasks reach remote files
        (:class:`ctframe.sources.Access`).

    Raises
    ------
    NoSeriesError
        `root` does not exist.
    SourceError
        A remote source cannot be reached or refuses access.
    Exception
        Any exception other than a :class:`~ctframe.errors.CTFrameError` while
        reading a header is a bug in ctframe: the scan stops and re-raises it,
        with a note naming the file (a bad file is a problem row, never this).

    Warns
    -----
    ScanWarning
        Some files were skipped (unless `warn_skipped` is off); see :func:`problems_table`.
    PerformanceWarning
        Once per reason: the worker processes could not start or one of them
        ended, so headers were read in this process.

    Notes
    -----
    **Computes** (reads headers with ``stop_before_pixels``; over DICOMweb,
    QIDO-RS and WADO-RS metadata only).

    Examples
    --------
    >>> import ctframe, tempfile
    >>> from ctframe.testing import write_phantom_series
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_phantom_series(folder, shape=(8, 64, 64))
    >>> catalog = ctframe.scan(folder)
    >>> len(catalog), catalog["stack_key"].nunique()
    (8, 1)
    """
    roots = _as_roots(root)
    salt = resolve_salt(salt)
    access = access_of(roots, storage_options, salt=salt)
    if catalog is not None:
        from ctframe.catalog_store import update_catalog

        result = update_catalog(
            catalog, roots, salt=salt, include_phi=include_phi, workers=workers, progress=progress, access=access
        )
    else:
        result = read_catalog_rows(
            roots, None, salt=salt, include_phi=include_phi, workers=workers, progress=progress, access=access
        )
        result = assign_stacks(result.rows).pipe(with_scan_attrs, result)
    problems_df = problems_table(result)
    if len(problems_df) and warn_skipped:
        counts = problems_df["reason"].str.split(r"[;(]", n=1, regex=True).str[0].str.strip().value_counts()
        summary = "; ".join(f"{n} x {reason}" for reason, n in counts.head(4).items())
        n_files = result.attrs.get("n_files", len(problems_df))
        warnings.warn(
            f"{len(problems_df)} of {n_files} files were skipped ({summary}); "
            "see ctframe.problems_table(catalog) for each file and reason",
            ScanWarning,
            stacklevel=2,
        )
    return result


def _as_roots(root: Any) -> list[Any]:
    """The roots of a scan as a list (a location, a DICOMweb client, or several)."""
    if isinstance(root, str | os.PathLike) or is_dicomweb_client(root):
        return [root]
    roots = list(root)
    if not roots:
        raise NoSeriesError("nothing to scan: an empty list of locations")
    return roots


def is_dicomweb_client(obj: Any) -> bool:
    """Whether `obj` is a ``dicomweb_client.DICOMwebClient`` (checked by name: the package is imported lazily)."""
    return type(obj).__name__ == "DICOMwebClient"


def is_dicomweb_root(item: Any) -> bool:
    """Whether a scan root is a DICOMweb source: a ``dicomweb+http(s)://`` location or a DICOMwebClient."""
    return is_dicomweb_client(item) or location_kind(os.fspath(item)) == "dicomweb"


def access_of(roots: Sequence[Any], storage_options: dict[str, Any] | None, *, salt: str | None = None) -> Access:
    """The :class:`~ctframe.sources.Access` read tasks of `roots` need (storage options, DICOMweb settings)."""
    dicomweb: dict[str, Any] = {}
    for item in roots:
        if is_dicomweb_root(item):
            from ctframe.dicomweb import access_for

            salt = resolve_salt(salt)
            found = (
                access_for(None, client=item, salt=salt) if is_dicomweb_client(item) else access_for(item, salt=salt)
            )
            dicomweb.update(found.dicomweb)
    return Access(storage_options, dicomweb)


def root_label(item: Any) -> str:
    """How a root is named in attrs, tables and messages: an absolute local path or a redacted URL."""
    if is_dicomweb_client(item):
        return redact("dicomweb+" + str(getattr(item, "base_url", getattr(item, "url", "")) or "client"))
    text = os.fspath(item)
    if location_kind(text) == "local":
        return os.path.abspath(local_path(text))
    return redact(text)


class CatalogRows(NamedTuple):
    """Catalog rows read from a source, before stacks are assigned, with how they were read."""

    rows: pd.DataFrame
    problems: tuple[tuple[str, str], ...]
    mode: str
    pids: tuple[int, ...]
    n_files: int
    roots: tuple[str, ...]
    access: Access


def with_scan_attrs(catalog: pd.DataFrame, result: CatalogRows) -> pd.DataFrame:
    """`catalog` with the attrs :func:`scan` documents (problems, scan mode, roots, worker PIDs, access)."""
    # attrs hold plain tuples (pandas compares and copies attrs on every operation)
    catalog.attrs["problems"] = result.problems
    catalog.attrs["scan_mode"] = result.mode
    catalog.attrs["roots"] = result.roots  # series_table's folder column
    catalog.attrs["scan_worker_pids"] = result.pids
    catalog.attrs["n_files"] = result.n_files
    catalog.attrs["access"] = result.access
    return catalog


def read_catalog_rows(
    roots: Sequence[Any],
    paths: Sequence[str] | None,
    *,
    salt: str,
    include_phi: bool,
    workers: int | None,
    progress: bool | None,
    access: Access,
) -> CatalogRows:
    """Read the headers of `paths` (default: every file of `roots`) into catalog rows.

    DICOMweb roots are discovered from QIDO-RS and WADO-RS metadata
    (:func:`ctframe.dicomweb.discover`); local files with the worker pool;
    remote files with threads.
    """
    frames: list[pd.DataFrame] = []
    problems: list[dict[str, str]] = []
    modes: list[str] = []
    pids: tuple[int, ...] = ()
    web_roots = [r for r in roots if is_dicomweb_root(r)]
    file_roots = [r for r in roots if not is_dicomweb_root(r)]
    n_instances = 0
    for item in web_roots:
        from ctframe.dicomweb import discover

        frame, probs = discover(item, salt=salt, include_phi=include_phi, access=access)
        frames.append(frame)
        problems.extend(probs)
        n_instances += frame["path"].nunique() + len(probs)
        modes.append("dicomweb")
    if paths is None:
        local = [r for r in file_roots if location_kind(os.fspath(r)) == "local"]
        paths = list(iter_files([local_path(os.fspath(r)) for r in local])) if local else []
        for item in file_roots:
            if item not in local:
                paths.extend(info.path for info in list_files(os.fspath(item), access))
    local_paths = [p for p in paths if not is_remote(p)]
    remote_paths = [p for p in paths if is_remote(p)]
    n_files = len(paths)
    show = progress if progress is not None else (None if n_files >= 2000 else False)
    with _progress(n_files, show, "scanning headers") as bar:
        if local_paths:
            cfg = get_config()["scan"]
            n_workers = cfg["workers"] if workers is None else workers
            n_workers = n_workers or os.cpu_count() or 1
            mode, pids, done = _scan_in_processes(local_paths, n_workers, cfg, salt, include_phi, frames, problems, bar)
            if not done:  # in this process: small trees, workers=1, or no pool to be had
                for b in _batches(local_paths, 256):  # a catalog frame per 256 files: few frames, flat memory
                    frame, probs = _read_batch(b, salt, include_phi)
                    frames.append(frame)
                    problems.extend(probs)
                    bar.update(len(b))
            modes.append(mode)
        if remote_paths:
            modes.append(_scan_in_threads(remote_paths, salt, include_phi, access, frames, problems, bar))
    frames = [f for f in frames if len(f)]  # batches of skipped files only add no rows
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=catalog_columns(include_phi))
    return CatalogRows(
        rows=rows,
        problems=tuple(sorted((p["path"], p["reason"]) for p in problems)),
        mode="; ".join(modes) or "in-process: no files",
        pids=pids,
        n_files=n_files + n_instances,
        roots=tuple(root_label(r) for r in roots),
        access=access,
    )


#: Threads that read remote headers at once (each mostly waits on the network).
REMOTE_HEADER_THREADS = 16


def _scan_in_threads(
    paths: Sequence[str],
    salt: str,
    include_phi: bool,
    access: Access,
    frames: list[pd.DataFrame],
    problems: list[dict[str, str]],
    bar: Any,
) -> str:
    """Read remote headers with a thread pool (ranged reads; see :func:`ctframe.sources.open_for_header`)."""
    from concurrent.futures import ThreadPoolExecutor

    batches = _batches(paths, 16)
    n_threads = min(REMOTE_HEADER_THREADS, len(batches))
    # library warnings are ignored once, here, for the reading threads (see library_warnings_ignored)
    with library_warnings_ignored(), ThreadPoolExecutor(n_threads, thread_name_prefix="ctframe-scan") as pool:
        for (frame, probs), batch in zip(
            pool.map(lambda b: _read_batch(b, salt, include_phi, access), batches), batches, strict=True
        ):
            frames.append(frame)
            problems.extend(probs)
            bar.update(len(batch))
    return f"threads:{n_threads}"


def problems_table(catalog: pd.DataFrame) -> pd.DataFrame:
    """The files :func:`scan` skipped, as a DataFrame with columns ``path`` and ``reason``.

    Parameters
    ----------
    catalog : DataFrame
        A catalog returned by :func:`scan`.

    Returns
    -------
    DataFrame
        One row per skipped file, sorted by path (empty when none was skipped).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "notes.txt").write_text("hello")
    >>> import warnings; warnings.simplefilter("ignore")
    >>> problems_table(scan(folder))["reason"].tolist()
    ["not a DICOM file (no 'DICM' preamble and no recognisable dataset)"]
    """
    return pd.DataFrame(list(catalog.attrs.get("problems", ())), columns=["path", "reason"])


# --------------------------------------------------------------------------- stacks


def assign_stacks(catalog: pd.DataFrame) -> pd.DataFrame:
    """Add ``stack_key`` and ``slice_position_mm`` and sort slices along the normal.

    A series is split into stacks by image orientation, compared with the
    tolerance ``qc.orientation_tolerance`` on each direction cosine (never by
    rounding; see :func:`ctframe.geometry.orientation_groups`), and further by
    AcquisitionNumber where positions repeat within one orientation and the
    acquisitions do not repeat them. ``stack_key`` is the SeriesInstanceUID for a
    series with one stack and ``"<uid>#<k>"`` (k = 1, 2, ..., largest first)
    otherwise. ``slice_position_mm`` is ImagePositionPatient projected on the
    stack's slice normal (the cross product of its row and column direction
    cosines); slices are ordered by it, never by file name or InstanceNumber.

    Parameters
    ----------
    catalog : DataFrame
        Rows of :func:`scan` (any subset).

    Returns
    -------
    DataFrame
        A new catalog, sorted by ``stack_key`` then ``slice_position_mm``.
    """
    out = catalog.drop(columns=[c for c in STACK_COLUMNS if c in catalog], errors="ignore").copy()
    if out.empty:
        for c in STACK_COLUMNS:
            out[c] = pd.Series(dtype=str if c == "stack_key" else float)
        return out
    out = out.reset_index(drop=True)
    qc = get_config()["qc"]
    tol = qc["duplicate_tolerance_mm"]
    missing_uid = out["series_uid"].fillna("") == ""
    if missing_uid.any():  # group files without a SeriesInstanceUID by folder
        folders = out.loc[missing_uid, "path"].map(
            lambda p: p.rsplit("/", 1)[0] if is_remote(p) else os.path.dirname(os.path.abspath(p))
        )
        out.loc[missing_uid, "series_uid"] = ["noseries-" + tokenize_text(f) for f in folders]
    positions = out[list(POSITION_COLUMNS)].to_numpy(float)
    orientations = out[list(ORIENTATION_COLUMNS)].to_numpy(float)
    acquisitions = out["acquisition_number"]
    along = np.full(len(out), np.nan)
    keys = np.full(len(out), "", dtype=object)
    for series_uid, idx in out.groupby("series_uid", sort=False).indices.items():
        labels, references = orientation_groups(orientations[idx], tolerance=qc["orientation_tolerance"])
        normals = np.cross(references[:, :3], references[:, 3:])
        with np.errstate(all="ignore"):  # corrupt positions may overflow: they become inf/NaN, flagged later
            along[idx] = np.einsum("ij,ij->i", positions[idx], normals[labels])
        parts: list[np.ndarray] = []
        for group in range(len(references)):  # largest orientation group first
            members = idx[labels == group]
            codes = pd.factorize(acquisitions.iloc[members], sort=True, use_na_sentinel=False)[0]
            if _has_duplicates(along[members], tol) and codes.max(initial=0) > 0:
                acq_groups = [members[codes == code] for code in range(codes.max() + 1)]
                if not any(_has_duplicates(along[g], tol) for g in acq_groups):
                    parts.extend(acq_groups)
                    continue
            parts.append(members)
        parts.sort(key=len, reverse=True)  # stable: ties keep orientation, then acquisition order
        for k, members in enumerate(parts, start=1):
            keys[members] = str(series_uid) if len(parts) == 1 else f"{series_uid}#{k}"
    out["stack_key"] = keys.astype(str)
    out["slice_position_mm"] = along
    out = out[[c for c in out.columns if c not in STACK_COLUMNS] + list(STACK_COLUMNS)]
    return out.sort_values(["stack_key", "slice_position_mm", "path", "frame"], ignore_index=True, na_position="last")


def tokenize_text(text: str) -> str:
    """Short stable hex digest of `text` (for keys that must not show the text)."""
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:10]


def _has_duplicates(positions: np.ndarray, tol: float) -> bool:
    values = np.sort(positions[~np.isnan(positions)])
    return bool(len(values) > 1 and (np.diff(values) < tol).any())


# --------------------------------------------------------------------------- QC table


def _stack_qc(group: pd.DataFrame, qc: dict[str, Any]) -> dict[str, Any]:
    first = group.iloc[0]
    geometry = stack_geometry(group, qc=qc)  # every slice's geometry, checked (ctframe.geometry)
    header_tilt = group["gantry_tilt_deg"].abs().max()

    calibration = calibration_of_rows(group)
    image_types = set("\\".join(group["image_type"].astype(str)).upper().split("\\"))
    flags = {
        "has_duplicates": geometry.has_duplicates,
        "has_gaps": geometry.has_gaps,
        "irregular_spacing": geometry.irregular_spacing,
        "is_tilted": geometry.is_tilted,
        "rescale_varies": calibration.rescale_varies,
        "is_compressed": bool(group["is_compressed"].any()),
        "is_lossy": bool(group["is_lossy"].any()),
        "is_non_ct": bool((group["modality"] != "CT").any()),
        "is_localizer": bool(image_types & LOCALIZER_TYPES),
        "inconsistent_shape": "inconsistent_shape" in geometry.problems,
        "inconsistent_pixel_spacing": "inconsistent_pixel_spacing" in geometry.problems,
        "inconsistent_orientation": "inconsistent_orientation" in geometry.problems,
        "missing_geometry": "missing_geometry" in geometry.problems,
        "not_hu_calibrated": not calibration.usable,  # the rules of ctframe.calibration, as to_hu applies them
    }
    notes = [name.replace("_", " ") for name, on in flags.items() if on]
    notes = [  # a geometry flag's note says which values, on how many slices
        f"{note}: {geometry.problems[name]}" if name in geometry.problems else note
        for name, note in zip([n for n, on in flags.items() if on], notes, strict=True)
    ]
    if calibration.issue:
        notes[notes.index("not hu calibrated")] = f"not HU calibrated: {calibration.issue}"
    if geometry.n_missing_slices:
        notes.append(f"about {geometry.n_missing_slices} missing slice(s)")
    acquisition = {column: _agreed(group, column) for column in _ACQUISITION_COLUMNS}
    notes.extend(note for _, note in acquisition.values() if note)
    # not_hu_calibrated: to_hu refuses such a stack, so no HU table may be computed from it either
    usable = not any(
        flags[k]
        for k in (
            "is_non_ct", "is_localizer", "inconsistent_shape", "inconsistent_pixel_spacing",
            "inconsistent_orientation", "missing_geometry", "has_duplicates", "not_hu_calibrated",
        )
    )  # fmt: skip
    return {
        "stack_key": first["stack_key"],
        "series_uid": first["series_uid"],
        "patient_key": first["patient_key"],
        "study_uid": first["study_uid"],
        "study_date": first["study_date"],
        "study_datetime": first["study_datetime"],
        "series_number": first["series_number"],
        "series_description": first["series_description"],
        "modality": first["modality"],
        "orientation": geometry.orientation_label,
        "n_files": group["path"].nunique(),
        "n_slices": len(group),
        # one value where every slice agrees; missing (with the reason in qc_notes) where they do not
        "rows": geometry.rows,
        "columns": geometry.columns,
        "pixel_spacing_row_mm": geometry.pixel_spacing_mm[0],
        "pixel_spacing_col_mm": geometry.pixel_spacing_mm[1],
        "slice_thickness_mm": acquisition["slice_thickness_mm"][0],
        "spacing_median_mm": geometry.spacing_median_mm,
        "spacing_min_mm": geometry.spacing_min_mm,
        "spacing_max_mm": geometry.spacing_max_mm,
        "n_missing_slices": geometry.n_missing_slices,
        "tilt_angle_deg": round(geometry.tilt_angle_deg, 3),
        "gantry_tilt_deg": float(header_tilt) if np.isfinite(header_tilt) else float("nan"),
        "convolution_kernel": acquisition["convolution_kernel"][0],
        "kvp": acquisition["kvp"][0],
        "manufacturer": acquisition["manufacturer"][0],
        "manufacturer_model": acquisition["manufacturer_model"][0],
        "transfer_syntax": ", ".join(sorted(group["transfer_syntax"].unique())),
        **flags,
        "usable": usable,
        "calibration_issue": calibration.issue,
        "qc_notes": "; ".join(notes),
    }


#: Acquisition values a stack reports as one value; where its slices disagree, the note says so.
_ACQUISITION_COLUMNS = ("slice_thickness_mm", "convolution_kernel", "kvp", "manufacturer", "manufacturer_model")


def _agreed(group: pd.DataFrame, column: str) -> tuple[Any, str]:
    """The value every slice of `group` has in `column`, and a note where they disagree.

    Where slices disagree, a number is NaN and a text is every value joined by
    ``/`` (so the longitudinal comparison sees a difference), never the first
    slice's value; the note counts the slices of each value.

    Examples
    --------
    >>> _agreed(pd.DataFrame({"kvp": [120.0, 120.0, 100.0]}), "kvp")
    (nan, 'kvp differs between slices (100 on 1, 120 on 2)')
    """
    values = group[column]
    counts = values.value_counts(dropna=False, sort=False).sort_index()
    numeric = pd.api.types.is_numeric_dtype(values)
    if len(counts) <= 1:
        value = values.iloc[0] if len(values) else (np.nan if numeric else "")
        return (float(value) if numeric else value), ""
    listing = ", ".join(f"{v:g} on {n}" if numeric else f"{v or 'none'} on {n}" for v, n in counts.items())
    name = column.removesuffix("_mm").replace("_", " ")
    joined = np.nan if numeric else "/".join(str(v) for v in counts.index)
    return joined, f"{name} differs between slices ({listing})"


def _stack_folder(paths: pd.Series, roots: Sequence[str]) -> str:
    """The folder holding a stack's files (their common folder), relative to the scanned root that holds it.

    Absolute when no scanned root holds it (a catalog put together by other means). Remote files: the
    common prefix of their URLs, relative to the root URL; DICOMweb instances have no folder (``""``).
    """
    unique = [str(p) for p in paths.unique()]
    if any(location_kind(p) == "dicomweb" for p in unique):
        return ""
    if any(is_remote(p) for p in unique):
        parts = [p.split("/")[:-1] for p in unique]
        common = "/".join(os.path.commonprefix(parts))  # noqa: RUF071 - lists of path parts, not strings
        for root in roots:
            if common == root.rstrip("/") or common.startswith(root.rstrip("/") + "/"):
                return common[len(root.rstrip("/")) :].lstrip("/") or "."
        return common
    folders = sorted({os.path.dirname(os.path.abspath(p)) for p in unique})
    common = os.path.commonpath(folders) if folders else ""
    for root in roots:
        if is_remote(root):
            continue
        base = root if os.path.isdir(root) else os.path.dirname(root)
        if common == base or common.startswith(base.rstrip(os.sep) + os.sep):
            return os.path.relpath(common, base)
    return common


def series_table(catalog: pd.DataFrame) -> pd.DataFrame:
    """One row per stack of the catalog, with geometry and QC flags.

    Parameters
    ----------
    catalog : DataFrame
        The output of :func:`scan` (or any subset of its rows).

    Returns
    -------
    DataFrame
        Columns include ``stack_key``, ``series_uid``, ``n_slices``,
        ``spacing_median_mm``/``_min_``/``_max_``, ``tilt_angle_deg`` (angle
        between the slice normal and the direction the slices advance: the
        gantry tilt as the geometry shows it), flags ``has_duplicates``,
        ``has_gaps``, ``irregular_spacing``, ``is_tilted``, ``rescale_varies``,
        ``is_compressed``, ``is_lossy``, ``is_non_ct``, ``is_localizer``,
        ``inconsistent_shape``, ``inconsistent_pixel_spacing``,
        ``inconsistent_orientation``, ``missing_geometry``, ``not_hu_calibrated``,
        ``usable`` (False for a non-CT, localizer, mixed-size, mixed-spacing,
        mixed-orientation, duplicate, missing-geometry or not-HU-calibrated
        stack: what the cohort may not compute HU tables from). ``rows``,
        ``columns`` and ``pixel_spacing_row_mm``/``_col_mm`` hold the value every
        slice shares and are missing where the slices disagree (the flag is set
        and ``qc_notes`` lists the values with their slice counts; see
        :func:`ctframe.geometry.stack_geometry`). ``folder`` is the folder holding
        the stack's files, relative to the root given to :func:`scan` (``.`` for
        the root itself). ``calibration_issue`` (why the stack cannot
        become HU, from :func:`ctframe.calibration.assess_calibration`; empty
        when it can) and a readable ``qc_notes``. Never the identifying
        columns of ``scan(..., include_phi=True)``: those go only into
        :func:`ctframe.linkage_table`.

    Notes
    -----
    **Computes** (from the catalog only; no file is read).

    Examples
    --------
    >>> import ctframe, tempfile
    >>> from ctframe.testing import write_phantom_series
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_phantom_series(folder, shape=(8, 64, 64), spacing_mm=(2.0, 0.8, 0.8))
    >>> table = ctframe.series_table(ctframe.scan(folder))
    >>> table[["n_slices", "spacing_median_mm", "has_gaps"]].to_dict("records")
    [{'n_slices': 8, 'spacing_median_mm': 2.0, 'has_gaps': False}]
    """
    if "stack_key" not in catalog:
        catalog = assign_stacks(catalog)
    qc = get_config()["qc"]
    rows = [_stack_qc(group, qc) for _, group in catalog.groupby("stack_key", sort=True)]
    roots = sorted(catalog.attrs.get("roots", ()), key=len, reverse=True)  # the deepest root holding a folder
    for row, (_, group) in zip(rows, catalog.groupby("stack_key", sort=True), strict=True):
        row["folder"] = _stack_folder(group["path"], roots)
    table = pd.DataFrame(rows, columns=list(SERIES_COLUMNS))
    table[["rows", "columns"]] = table[["rows", "columns"]].astype("Int64")  # NA where the slices differ in size
    return table
