"""Where cohort graphs run: dask's threaded scheduler, or a dask.distributed cluster.

Library code builds graphs; :func:`compute` is the one place that runs them.
The caller picks the scheduler: nothing (the local threaded scheduler), a
scheduler name (``"threads"``, ``"synchronous"``, ``"processes"``), a
``distributed.Client``, or the address of a running scheduler
(``"tcp://10.0.0.5:8786"``). The same graph gives the same numbers on each.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import dask

from ctframe.errors import CTFrameError

__all__ = ["Scheduler", "compute", "connect", "local_cluster", "scheduler_client"]

Scheduler = Any  # None | str | distributed.Client


def _is_client(obj: Any) -> bool:
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return False
    return isinstance(obj, Client)


@contextlib.contextmanager
def scheduler_client(scheduler: Scheduler, *, timeout_s: float | None = None) -> Iterator[Any]:
    """Yield a distributed Client for `scheduler`, or None for a local scheduler.

    An address is connected to (and the connection closed afterwards); a Client
    is used as given.

    Parameters
    ----------
    scheduler : None, str or distributed.Client
        As in :func:`compute`.
    timeout_s : float, optional
        Seconds to wait for the scheduler at an address (default: dask's
        ``distributed.comm.timeouts.connect``).

    Raises
    ------
    CTFrameError
        The scheduler address cannot be reached.
    """
    if _is_client(scheduler):
        yield scheduler
        return
    if isinstance(scheduler, str) and "://" in scheduler:
        client = connect(scheduler, timeout_s=timeout_s)
        try:
            yield client
        finally:
            client.close()
        return
    yield None


def connect(address: str, *, timeout_s: float | None = None) -> Any:
    """Connect a ``distributed.Client`` to the scheduler at `address`.

    Raises
    ------
    CTFrameError
        Nothing answers at `address` within `timeout_s` seconds.
    """
    from distributed import Client

    timeout = timeout_s if timeout_s is not None else dask.config.get("distributed.comm.timeouts.connect")
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, ValueError) as exc:  # ValueError: a malformed address
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CTFrameError(
            f"cannot reach the dask scheduler at {address} ({reason}); start it with `dask scheduler` "
            "or pass scheduler=None to compute locally"
        ) from None


#: Seconds between the progress lines written when stderr is not a terminal.
PROGRESS_LINE_INTERVAL_S = 30.0


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _elapsed(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class _StageLines:
    """Progress as plain lines: one every `interval_s` while running, one at the end (counts, elapsed time)."""

    def __init__(self, label: str, interval_s: float) -> None:
        self.label, self.interval_s = label, interval_s
        self.start = self.last = time.monotonic()

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval_s and done < total:
            self.last = now
            _say(f"{self.label}: {done}/{total} tasks done, {_elapsed(now - self.start)}")

    def finish(self, total: int, *, failed: bool = False) -> None:
        what = "stopped by an error after" if failed else "done,"
        _say(f"{self.label}: {what} {total} tasks in {_elapsed(time.monotonic() - self.start)}")


def _local_lines(label: str, interval_s: float) -> Any:
    """A dask callback that writes :class:`_StageLines` for the local schedulers."""
    from dask.callbacks import Callback

    class Lines(Callback):  # type: ignore[misc]
        def _start_state(self, dsk: Any, state: Any) -> None:
            self.lines = _StageLines(label, interval_s)
            self.total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
            self.done = 0

        def _posttask(self, *args: Any) -> None:
            self.done += 1
            self.lines.update(self.done, self.total)

        def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
            self.lines.finish(self.total, failed=errored)

    return Lines()


def _cluster_progress(futures: list[Any], client: Any, *, live: bool, label: str, interval_s: float) -> None:
    """Follow `futures` with distributed's own progress feed: a bar on a terminal, lines otherwise."""
    from distributed.diagnostics.progressbar import TextProgressBar

    class Bar(TextProgressBar):  # type: ignore[misc]
        """distributed's text bar, on stderr; or, off a terminal, :class:`_StageLines`."""

        lines = _StageLines(label, interval_s)

        def _draw_bar(self, remaining: int, all: int, **kwargs: Any) -> None:
            if live:
                frac = (1 - remaining / all) if all else 1.0
                sys.stderr.write(f"\r{label}: [{'#' * int(40 * frac):<40}] {int(100 * frac)}% | {all} tasks")
                sys.stderr.flush()
            else:
                self.lines.update(all - remaining, all)

        def _draw_stop(self, **kwargs: Any) -> None:
            if live:
                sys.stderr.write("\33[2K\r")
                sys.stderr.flush()
            self.lines.finish(kwargs.get("all", 0), failed=kwargs.get("status") == "error")

    Bar(futures, scheduler=client.scheduler.address, interval="100ms" if live else "1s")


def compute(
    *collections: Any,
    scheduler: Scheduler = None,
    progress: bool | None = None,
    label: str = "computing",
) -> tuple[Any, ...]:
    """Compute dask collections in one pass, locally or on a cluster.

    Parameters
    ----------
    *collections
        Dask collections (arrays, delayed objects, ...).
    scheduler : None, str or distributed.Client
        None or ``"threads"``: the local threaded scheduler; ``"synchronous"``,
        ``"processes"``; a ``distributed.Client``; or a scheduler address such
        as ``"tcp://127.0.0.1:8786"``.
    progress : bool, optional
        Report progress on stderr: a live bar when stderr is a terminal;
        otherwise plain lines, one every ``PROGRESS_LINE_INTERVAL_S`` seconds
        and one at the end, with task counts and elapsed time (no carriage
        returns in a log). On a cluster the counts come from the scheduler
        (distributed's progress feed). Default: on when stderr is a terminal.
    label : str
        The name of the stage in the progress output.

    Returns
    -------
    tuple
        The computed results, in order.

    Notes
    -----
    **Computes** (the one place where cohort graphs run).

    Examples
    --------
    >>> import dask.array as da
    >>> compute(da.ones(4).sum(), progress=False)
    (np.float64(4.0),)
    """
    terminal = sys.stderr.isatty()
    show = terminal if progress is None else progress
    with scheduler_client(scheduler) as client:
        if client is not None:
            futures = client.compute(list(collections))
            if show:
                _cluster_progress(futures, client, live=terminal, label=label, interval_s=PROGRESS_LINE_INTERVAL_S)
            return tuple(client.gather(futures))
        name = scheduler if isinstance(scheduler, str) else "threads"
        if not show:
            return dask.compute(*collections, scheduler=name)
        if terminal:
            from dask.diagnostics import ProgressBar

            with ProgressBar(minimum=1.0, out=sys.stderr):
                return dask.compute(*collections, scheduler=name)
        with _local_lines(label, PROGRESS_LINE_INTERVAL_S):
            return dask.compute(*collections, scheduler=name)


def local_cluster(n_workers: int = 2, *, threads_per_worker: int = 1, **kwargs: Any) -> Any:
    """Start a ``distributed.LocalCluster`` of worker processes tuned for ctframe.

    The nanny's default ``MALLOC_TRIM_THRESHOLD_=65536`` makes glibc return
    memory to the system after every large free; on chunked DICOM reads that
    costs more than it saves, so it is left to glibc's default here.
    No dashboard unless `dashboard_address` is given (":0" picks a free port).

    Returns
    -------
    distributed.LocalCluster
        Use it as a context manager and pass ``distributed.Client(cluster)``
        as ``scheduler=``.
    """
    from distributed import LocalCluster

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            **{"dashboard_address": None, **kwargs},
        )
