"""Where graphs run and what the user sees meanwhile: progress lines off a terminal, a bar on one."""

from __future__ import annotations

import io
import re
from pathlib import Path

import dask.array as da
import numpy as np
import pydicom
import pytest

import ctframe
from ctframe import execution


class _Stream(io.StringIO):
    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


@pytest.fixture
def lidc_sum(lidc_dir: Path) -> tuple[da.Array, float]:
    """A real graph (the sum of the LIDC series' stored values) and pydicom's eager sum of the same."""
    volume = ctframe.open_series(lidc_dir, slices_per_chunk=8)
    files = sorted(lidc_dir.glob("*.dcm"))
    reference = sum(float(pydicom.dcmread(p).pixel_array.astype(np.int64).sum()) for p in files)
    return volume.data.astype("int64").sum(), reference


def test_compute__off_a_terminal_writes_lines_with_counts_and_time(lidc_sum, monkeypatch: pytest.MonkeyPatch) -> None:
    graph, reference = lidc_sum
    stream = _Stream(terminal=False)
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.setattr(execution, "PROGRESS_LINE_INTERVAL_S", 0.0)  # a line after every task
    (total,) = execution.compute(graph, progress=True, label="summing")
    assert float(total) == reference
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert re.fullmatch(r"summing: done, (\d+) tasks in [\d.]+ s", lines[-1]), lines[-1]
    n_tasks = int(re.fullmatch(r"summing: done, (\d+) tasks.*", lines[-1]).group(1))
    pattern = re.compile(r"summing: (\d+)/(\d+) tasks done, .* s")
    done = [int(m.group(1)) for line in lines[:-1] if (m := pattern.fullmatch(line))]
    assert done == sorted(done) and len(done) == n_tasks - 1 and len(lines) == n_tasks  # one per task but the last


def test_compute__quiet_by_default_off_a_terminal(lidc_sum, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = _Stream(terminal=False)
    monkeypatch.setattr("sys.stderr", stream)
    execution.compute(lidc_sum[0])
    assert stream.getvalue() == ""


@pytest.mark.parametrize("terminal", [False, True])
def test_compute__on_a_cluster_progress_comes_from_the_scheduler(
    lidc_sum, monkeypatch: pytest.MonkeyPatch, terminal: bool
) -> None:
    from distributed import Client, LocalCluster

    graph, reference = lidc_sum
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        stream = _Stream(terminal=terminal)
        monkeypatch.setattr("sys.stderr", stream)
        (total,) = execution.compute(graph, scheduler=client, progress=True)
        monkeypatch.undo()
    assert float(total) == reference
    text = stream.getvalue()
    assert re.search(r"computing: done, \d+ tasks in [\d.]+ s\n$", text), text
    assert ("\r" in text and "100%" in text) if terminal else "\r" not in text, text


def test_connect__unreachable_address_is_one_python_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ctframe.CTFrameError, match=r"cannot reach the dask scheduler .*scheduler=None") as info:
        execution.connect(f"tcp://127.0.0.1:{port}", timeout_s=1)
    assert "--" not in str(info.value)  # a Python message names no CLI option
