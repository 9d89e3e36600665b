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
from collections.abc import Iterator
from typing import Any

import dask

from ctframe.errors import CTFrameError

__all__ = ["Scheduler", "compute", "local_cluster", "scheduler_client"]

Scheduler = Any  # None | str | distributed.Client


def _is_client(obj: Any) -> bool:
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return False
    return isinstance(obj, Client)


@contextlib.contextmanager
def scheduler_client(scheduler: Scheduler) -> Iterator[Any]:
    """Yield a distributed Client for `scheduler`, or None for a local scheduler.

    An address is connected to (and the connection closed afterwards); a Client
    is used as given.

    Raises
    ------
    CTFrameError
        The scheduler address cannot be reached.
    """
    if _is_client(scheduler):
        yield scheduler
        return
    if isinstance(scheduler, str) and "://" in scheduler:
        from distributed import Client

        try:
            client = Client(
                scheduler, timeout=dask.config.get("distributed.comm.timeouts.connect"), set_as_default=False
            )
        except OSError as exc:
            raise CTFrameError(
                f"cannot reach the dask scheduler at {scheduler} ({exc}); start it with `dask scheduler` "
                "or drop the address to run locally"
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    yield None


def compute(*collections: Any, scheduler: Scheduler = None, progress: bool | None = None) -> tuple[Any, ...]:
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
        Show a progress bar (dask's diagnostics locally, ``distributed.progress``
        on a cluster). Default: on when stderr is a terminal.

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
    show = sys.stderr.isatty() if progress is None else progress
    with scheduler_client(scheduler) as client:
        if client is not None:
            futures = client.compute(list(collections))
            if show:
                from distributed import progress as distributed_progress

                distributed_progress(futures)
            return tuple(client.gather(futures))
        name = scheduler if isinstance(scheduler, str) else "threads"
        if show:
            from dask.diagnostics import ProgressBar

            with ProgressBar(minimum=1.0, out=sys.stderr):
                return dask.compute(*collections, scheduler=name)
        return dask.compute(*collections, scheduler=name)


def local_cluster(n_workers: int = 2, *, threads_per_worker: int = 1, **kwargs: Any) -> Any:
    """Start a ``distributed.LocalCluster`` of worker processes tuned for ctframe.

    The nanny's default ``MALLOC_TRIM_THRESHOLD_=65536`` makes glibc return
    memory to the system after every large free; on chunked DICOM reads that
    costs more than it saves, so it is left to glibc's default here.

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
            n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True, dashboard_address=None, **kwargs
        )
