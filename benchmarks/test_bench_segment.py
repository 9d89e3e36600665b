"""Lung segmentation and region statistics: time and peak memory on LIDC-IDRI-0001 and a 300-slice phantom.

Run::

    .venv/bin/pytest benchmarks/test_bench_segment.py --benchmark-only

Cases (group per dataset):

* ``lung_mask``: open + HU + :func:`ctframe.lung_mask`, computed to numpy;
* ``lung_mask+region_stats``: the full sink, :func:`ctframe.region_stats` of the
  lazy labels over the lazy volume (the volume is read twice, see its Notes).

Timings come from pytest-benchmark (threaded scheduler, this machine's cores).
Peak memory is measured once per case in a fresh subprocess (this file run as a
script) and put in ``extra_info`` (see it with ``--benchmark-json``):
``peak_rss_mib`` (``VmHWM``), ``baseline_rss_mib`` (after imports),
``traced_peak_mib`` (peak of what numpy and Python allocate, from
``tracemalloc`` in a second run: unlike RSS it does not include memory glibc
keeps in per-thread arenas after it is freed, which makes RSS vary from run to
run with the threads' task order) and the volume's own size for scale
(``hu_float32_mib``, ``code_uint8_mib``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

CASES = ("lung_mask", "lung_mask+region_stats")


def _rss_mib(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as fp:
        for line in fp:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_case(case: str, folder: str | Path) -> dict[str, float]:
    """Run one case on one series folder; returns seconds and the volume's shape."""
    import ctframe

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctframe.ScanWarning)
        hu = ctframe.to_hu(ctframe.open_series(folder))
    labels = ctframe.lung_mask(hu)
    if case == "lung_mask":
        values = labels.values
        result = {"right_ml": float((values == 1).sum()), "left_ml": float((values == 2).sum())}
    elif case == "lung_mask+region_stats":
        table = ctframe.region_stats(hu, labels).set_index("region")
        result = {"right_ml": float(table.loc["right_lung", "voxel_count"]),
                  "left_ml": float(table.loc["left_lung", "voxel_count"])}  # fmt: skip
    else:
        raise ValueError(case)
    voxels = hu.size
    return {"seconds": time.perf_counter() - start, "voxels": float(voxels), **result}


def measure_memory(case: str, folder: Path, *, traced: bool = False) -> dict[str, float]:
    """Peak RSS (and with `traced`, the peak of memory numpy and Python allocate) of `case` in a fresh process."""
    command = [sys.executable, __file__, case, str(folder), *(["--traced"] if traced else [])]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dataset", ["lidc", "phantom300"])
def test_bench_segment(benchmark, case: str, dataset: str, request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue("lidc_dir" if dataset == "lidc" else "phantom_300")
    benchmark.group = f"lung segmentation: {dataset}"
    result = benchmark.pedantic(run_case, args=(case, folder), rounds=3, warmup_rounds=0)
    assert result["right_ml"] > 0 and result["left_ml"] > 0
    memory = measure_memory(case, folder)
    traced = measure_memory(case, folder, traced=True)
    voxels = memory["voxels"]
    benchmark.extra_info.update(
        peak_rss_mib=round(memory["peak_rss_mib"], 1),
        traced_peak_mib=round(traced["traced_peak_mib"], 1),
        baseline_rss_mib=round(memory["baseline_rss_mib"], 1),
        hu_float32_mib=round(voxels * 4 / 2**20, 1),
        code_uint8_mib=round(voxels / 2**20, 1),
        subprocess_seconds=round(memory["seconds"], 2),
    )


if __name__ == "__main__":  # memory probe: python benchmarks/test_bench_segment.py CASE FOLDER [--traced]
    import tracemalloc

    import ctframe  # noqa: F401  (imports count in the baseline, not the peak)

    traced = "--traced" in sys.argv
    if traced:
        tracemalloc.start()
    baseline = _rss_mib()
    stats = run_case(sys.argv[1], sys.argv[2])
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a probe started
    # from a large pytest process would report the parent's peak
    peak = _rss_mib("VmHWM")
    extra = {"traced_peak_mib": tracemalloc.get_traced_memory()[1] / 2**20} if traced else {}
    print(json.dumps({**stats, "peak_rss_mib": peak, "baseline_rss_mib": baseline, **extra, "pid": os.getpid()}))
