"""Faults: a killed summarize, a lost dask worker, and inputs that must stay untouched.

* ``ctframe summarize`` killed (SIGKILL, SIGTERM, SIGINT) while it scans,
  computes or writes leaves no OUTDIR (or a complete one), SIGINT exits 130 with
  one line, and the same command run again completes (sweeping what a killed
  run left beside OUTDIR).
* A worker process killed on a ``dask.distributed`` LocalCluster in the middle
  of ``summarize`` costs a retry, not a row: the tables equal the threaded ones.
* Inputs are opened read-only and never modified: checksums, sizes, mtimes and
  the file list are the same after a full run, and every Python-level open of
  an input file is a read.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from ctframe.cli import app
from ctframe.outputs import OUTPUT_FILES
from ctframe.testing import write_phantom_cohort

runner = CliRunner()
COHORT = {"n_patients": 2, "n_time_points": 2, "shape": (8, 32, 32), "spacing_mm": (10.0, 10.0, 10.0)}


@pytest.fixture(scope="module")
def cohort_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fault-cohort")
    write_phantom_cohort(root, **COHORT)
    return root


def _command(*args: str) -> list[str]:
    exe = Path(sys.executable).with_name("ctframe")
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "ctframe.cli", *args]


def _assert_complete(outdir: Path) -> None:
    names = {p.relative_to(outdir).as_posix() for p in outdir.rglob("*") if p.is_file()}
    assert set(OUTPUT_FILES) <= names, set(OUTPUT_FILES) - names
    assert "report.html" in names and any(n.startswith("figures/") for n in names)
    assert json.loads((outdir / "provenance.json").read_text())["inputs"]["n_files"] == 4 * COHORT["shape"][0]
    series = pd.read_parquet(outdir / "series.parquet")
    assert series["selected"].sum() == 4
    regions = pd.read_parquet(outdir / "regions.parquet")
    scan = regions[regions["region"] == "scan"]
    assert len(scan) == 4 and scan["voxel_count"].gt(0).all()


def _partials(parent: Path) -> list[str]:
    return sorted(n for n in os.listdir(parent) if n.endswith(".partial") or ".old-" in n)


# --------------------------------------------------------------------------- a killed summarize

#: Where to kill: the line on stderr to wait for, or a file to wait for inside the temporary output.
POINTS = {
    "compute": ("series selected", None),
    "writing tables": (None, "."),
    "writing figures": (None, "figures"),
}


#: ``ctframe`` with every stage after a kill point made slower: each read task, each table
#: write and the figures take longer. A loaded machine could otherwise finish the whole run
#: between this test seeing the kill point and its signal arriving; the test is about where
#: the signal lands, not about speed, so the child is slowed, not changed. The child also
#: takes SIGINT as a terminal-launched process does: a shell starts background jobs with
#: SIGINT ignored, and children inherit that (a CI runner launched that way made the
#: SIGINT cases run to completion).
_SLOWED_CTFRAME = """
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)
import functools, sys, time
import pandas as pd
import ctframe.io, ctframe.report
from ctframe.cli import app

def slowed(func, seconds):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        time.sleep(seconds)
        return func(*args, **kwargs)
    return wrapper

ctframe.io.read_frames = slowed(ctframe.io.read_frames, 0.5)
pd.DataFrame.to_parquet = slowed(pd.DataFrame.to_parquet, 0.3)
pd.DataFrame.to_csv = slowed(pd.DataFrame.to_csv, 0.3)
report = ctframe.report.write_figures_and_report
ctframe.report.write_figures_and_report = lambda *a, **k: (report(*a, **k), time.sleep(3))[0]
app(prog_name="ctframe")
"""


def _slowed_command(*args: str) -> list[str]:
    return [sys.executable, "-c", _SLOWED_CTFRAME, *args]


def _wait_for(proc: subprocess.Popen, parent: Path, line: str | None, inside: str | None, timeout_s: float) -> str:
    """Block until the kill point is reached; return the stderr read so far."""
    seen: list[str] = []
    if line is not None:
        assert proc.stderr is not None
        for text in proc.stderr:
            seen.append(text)
            if line in text:
                return "".join(seen)
        pytest.fail(f"the run ended before {line!r}: {''.join(seen)}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name in os.listdir(parent):
            if name.endswith(".partial") and (parent / name / "summary" / inside).exists():
                return ""
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before the kill point")
        time.sleep(0.002)
    pytest.fail("kill point not reached in time")


@pytest.mark.parametrize(
    ("signum", "point"),
    [
        (signal.SIGKILL, "compute"),
        (signal.SIGKILL, "writing tables"),
        (signal.SIGKILL, "writing figures"),
        (signal.SIGTERM, "writing figures"),
        (signal.SIGINT, "compute"),
        (signal.SIGINT, "writing figures"),
    ],
    ids=lambda v: v.name if isinstance(v, signal.Signals) else v.replace(" ", "-"),
)
def test_summarize__killed_run_leaves_no_half_written_outdir(
    cohort_root: Path, tmp_path: Path, signum: signal.Signals, point: str
) -> None:
    outdir = tmp_path / "summary"
    line, inside = POINTS[point]
    proc = subprocess.Popen(
        _slowed_command("summarize", str(cohort_root), "-o", str(outdir)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        before = _wait_for(proc, tmp_path, line, inside, timeout_s=120)
        proc.send_signal(signum)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = before + rest
    assert proc.returncode != 0, "the run finished before the signal: the kill point was missed"
    assert not outdir.exists(), sorted(p.name for p in outdir.iterdir())
    if signum == signal.SIGINT:
        assert proc.returncode == 130, stderr
        assert stderr.strip().splitlines()[-1] == "ctframe: error: interrupted; nothing was written", stderr
        assert "Traceback" not in stderr
        assert not _partials(tmp_path), "an interrupted run must clean up after itself"
    else:
        assert proc.returncode == -signum
        if point != "compute":  # killed while writing: its temporary is left for the next run to sweep
            assert _partials(tmp_path)
    # the same command again completes, and sweeps what a killed run left beside OUTDIR
    again = subprocess.run(
        _command("summarize", str(cohort_root), "-o", str(outdir), "-q"), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    _assert_complete(outdir)
    assert not _partials(tmp_path), _partials(tmp_path)


def test_summarize__stale_partial_of_a_live_process_is_kept(cohort_root: Path, tmp_path: Path) -> None:
    """The sweep only removes temporaries whose process is gone (here: this test's own parent is alive)."""
    from ctframe.export import _partial_prefix

    live = tmp_path / f"{_partial_prefix('summary')}{os.getppid()}.x.partial"
    dead = tmp_path / f"{_partial_prefix('summary')}{2**22 + 12345}.x.partial"
    live.mkdir()
    dead.mkdir()
    config = tmp_path / "scan.yaml"
    config.write_text("cohort:\n  regions: [scan]\n")
    args = ["summarize", str(cohort_root), "-o", str(tmp_path / "summary"), "-c", str(config), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert live.exists() and not dead.exists()


# --------------------------------------------------------------------------- a lost dask worker


def _slow_reads(marker_dir: str) -> None:
    """Run on each worker: every read task leaves a marker (pid) and takes 0.3 s longer."""
    import ctframe.io

    original = ctframe.io.read_frames

    def slow(refs, *, dtype, access=None):  # type: ignore[no-untyped-def]
        Path(marker_dir, f"{os.getpid()}-{time.monotonic_ns()}").touch()
        time.sleep(0.3)
        return original(refs, dtype=dtype, access=access)

    ctframe.io.read_frames = slow


def test_summarize__worker_lost_mid_computation_still_gives_full_tables(cohort_root: Path, tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    from ctframe.cohort import open_cohort, summarize
    from ctframe.execution import local_cluster

    cohort = open_cohort(cohort_root, slices_per_chunk=2)  # 4 read tasks per series, 16 in all
    threaded = summarize(cohort, regions=["scan"], progress=False)
    markers = tmp_path / "markers"
    markers.mkdir()
    killed: list[int] = []

    def kill_a_busy_worker() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            started = list(markers.iterdir())
            if len(started) >= 3:  # some reads done, others running: kill the worker of the latest
                latest = max(started, key=lambda p: int(p.name.split("-")[1]))
                pid = int(latest.name.split("-")[0])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.01)

    with local_cluster(2) as cluster, distributed.Client(cluster) as client:
        client.run(_slow_reads, str(markers))
        pids_before = set(client.run(os.getpid).values())
        killer = threading.Thread(target=kill_a_busy_worker)
        killer.start()
        on_cluster = summarize(cohort, regions=["scan"], scheduler=client, progress=False)
        killer.join()
        pids_after = set(client.run(os.getpid).values())
    assert killed and killed[0] in pids_before, "no worker was killed mid-run"
    assert killed[0] not in pids_after  # the nanny started a new worker process in its place
    assert on_cluster.problems.empty
    for name in ("histograms", "regions", "slice_areas", "longitudinal"):
        pd.testing.assert_frame_equal(getattr(on_cluster, name), getattr(threaded, name), check_exact=True, obj=name)


# --------------------------------------------------------------------------- inputs stay untouched


def _fingerprint(root: Path) -> dict[str, tuple[int, int, str]]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            st = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[path.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns, digest)
    return out


def test_summarize__inputs_are_opened_read_only_and_never_modified(
    cohort_root: Path, tmp_path: Path, monkeypatch
) -> None:
    before = _fingerprint(cohort_root)
    modes = [p.stat().st_mode for p in cohort_root.rglob("*.dcm")]
    opened: list[tuple[str, str]] = []
    real_open = builtins.open

    def recording_open(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(file, str | os.PathLike) and str(Path(os.fspath(file)).resolve()).startswith(str(cohort_root)):
            opened.append((os.fspath(file), mode))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording_open)
    result = runner.invoke(app, ["summarize", str(cohort_root), "-o", str(tmp_path / "summary")])
    monkeypatch.undo()
    assert result.exit_code == 0, result.output
    assert _fingerprint(cohort_root) == before  # same files, sizes, mtimes and bytes; nothing added
    assert [p.stat().st_mode for p in cohort_root.rglob("*.dcm")] == modes
    assert opened, "the recording hook saw no input file opened: it is not watching"
    writes = [(f, m) for f, m in opened if set(m) & set("wax+")]
    assert not writes, writes
