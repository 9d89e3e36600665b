"""The same cohort on threads, a LocalCluster and a real `dask scheduler` gives identical tables."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import dask
import pandas as pd
import pytest

from ctframe.cohort import open_cohort, summarize
from ctframe.execution import local_cluster
from ctframe.testing import write_phantom_cohort

distributed = pytest.importorskip("distributed")

REGIONS = None  # the default: scan, body, both lungs and each lung (runs the segmentation)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    write_phantom_cohort(root, n_patients=2, n_time_points=2, shape=(24, 64, 64), spacing_mm=(8.0, 5.6, 5.6))
    return open_cohort(root)


@pytest.fixture(scope="module")
def threaded(cohort):
    summary = summarize(cohort, regions=REGIONS, progress=False)
    lungs = summary.regions[summary.regions["region"] == "lungs"]
    assert len(lungs) == 4 and (lungs["volume_ml"] > 1000).all()  # the segmentation ran and found lungs
    return summary


def _assert_same(a, b) -> None:
    for name in ("histograms", "regions", "slice_areas", "longitudinal"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True, obj=name)


def test_summarize__local_cluster_equals_threads(cohort, threaded) -> None:
    with local_cluster(2) as cluster, distributed.Client(cluster) as client:
        on_cluster = summarize(cohort, regions=REGIONS, scheduler=client, progress=False)
        assert len(client.scheduler_info()["workers"]) == 2
    _assert_same(on_cluster, threaded)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_summarize__dask_scheduler_and_workers_equal_threads(cohort, threaded, tmp_path: Path) -> None:
    dask_cli = shutil.which("dask", path=os.path.dirname(sys.executable))
    if dask_cli is None:
        pytest.skip("the `dask` command is not installed beside this interpreter")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(
            [dask_cli, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "scheduler.log").open("w"), env=env,
        )
    ]  # fmt: skip
    try:
        procs.extend(
            subprocess.Popen(
                [dask_cli, "worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard"],
                stdout=subprocess.DEVNULL, stderr=(tmp_path / f"worker{i}.log").open("w"), env=env,
            )
            for i in range(2)
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                with distributed.Client(address, timeout="5s") as client:
                    client.wait_for_workers(2, timeout=60)
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        on_cluster = summarize(cohort, regions=REGIONS, scheduler=address, progress=False)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    _assert_same(on_cluster, threaded)


def test_summarize__unreachable_scheduler_is_a_clear_error(cohort) -> None:
    from ctframe.errors import CTFrameError

    with (
        dask.config.set({"distributed.comm.timeouts.connect": "2s"}),
        pytest.raises(CTFrameError, match="cannot reach the dask scheduler"),
    ):
        summarize(cohort, regions=REGIONS, scheduler=f"tcp://127.0.0.1:{_free_port()}", progress=False)
