"""Lung segmentation and region statistics: time and peak memory on every shared chest CT and a 300-slice phantom.

Run::

    .venv/bin/pytest benchmarks/test_bench_segment.py --benchmark-only

Cases (group per dataset):

* ``lung_mask``: open + HU + :func:`ctframe.lung_mask`, computed to numpy;
* ``lung_mask+region_stats``: the full sink, :func:`ctframe.region_stats` of the
  lazy labels over the lazy volume (the volume is read twice, see its Notes);
* ``from_hu``: :func:`ctframe.lung_mask` alone on HU already in memory (the
  issue's target: at most 3 s per 100 slices of 512x512 on 2 cores, peak
  memory at most 4x the HU volume);
* ``from_hu_previous``: the same with the implementation before issue 15
  (``ctframe/segment.py`` at commit ``PREVIOUS_COMMIT``, read with
  ``git show``), measured in the same run so that a busy machine slows both:
  compare the ratio, not the seconds. Skipped outside a git checkout.

Datasets: LIDC-IDRI-0001 (133 slices), NSCLC-Radiomics LUNG1-003 (107),
Lung-PET-CT-Dx A0001 (64, 5 mm) and the 300-slice phantom. ``extra_info``
has ``seconds_per_100_slices`` (from the benchmark's median).

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

import functools
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

CASES = ("lung_mask", "lung_mask+region_stats", "from_hu", "from_hu_previous")
#: The last commit with the segmentation before issue 15 (the geometry helper's change only).
PREVIOUS_COMMIT = "56286c6"
SHARED_DATA = Path(os.environ.get("CTFRAME_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
REAL = {
    "lidc": "lidc-idri-0001",
    "lung1_003": "nsclc-radiomics-lung1-003/ct",
    "lung_pet_ct_dx": "lung-pet-ct-dx-a0001",
}


def _rss_mib(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as fp:
        for line in fp:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


@functools.cache
def previous_lung_mask():
    """``lung_mask`` of ctframe/segment.py at PREVIOUS_COMMIT, or None outside a git checkout."""
    import importlib.util
    import tempfile

    root = Path(__file__).resolve().parents[1]
    try:
        source = subprocess.run(["git", "show", f"{PREVIOUS_COMMIT}:ctframe/segment.py"], cwd=root, check=True,
                                capture_output=True, text=True, timeout=60).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    path = Path(tempfile.mkdtemp()) / "segment_previous.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("segment_previous", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module.lung_mask


def load_hu(folder: str | Path):
    """HU of a series in memory (numpy-backed DataArray)."""
    import ctframe

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctframe.ScanWarning)
        return ctframe.to_hu(ctframe.open_series(folder)).compute()


def run_case(case: str, folder: str | Path, hu=None) -> dict[str, float]:
    """Run one case on one series folder (or on `hu` in memory); returns seconds and the volume's size."""
    import ctframe

    if case in ("from_hu", "from_hu_previous"):
        if hu is None:
            hu = load_hu(folder)
        function = ctframe.lung_mask if case == "from_hu" else previous_lung_mask()
        start = time.perf_counter()
        values = function(hu).values
        return {"seconds": time.perf_counter() - start, "voxels": float(hu.size), "slices": float(hu.shape[0]),
                "right_ml": float((values == 1).sum()), "left_ml": float((values == 2).sum())}  # fmt: skip
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
    return {"seconds": time.perf_counter() - start, "voxels": float(voxels), "slices": float(hu.shape[0]), **result}


def measure_memory(case: str, folder: Path, *, traced: bool = False) -> dict[str, float]:
    """Peak RSS (and with `traced`, the peak of memory numpy and Python allocate) of `case` in a fresh process."""
    command = [sys.executable, __file__, case, str(folder), *(["--traced"] if traced else [])]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


_HU_CACHE: dict[str, object] = {}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dataset", [*REAL, "phantom300"])
def test_bench_segment(benchmark, case: str, dataset: str, request: pytest.FixtureRequest) -> None:
    if dataset == "phantom300":
        folder = request.getfixturevalue("phantom_300")
    else:
        if not SHARED_DATA.is_dir():
            pytest.skip(f"real DICOM data not found at {SHARED_DATA}")
        folder = SHARED_DATA / REAL[dataset]
    if case == "from_hu_previous" and previous_lung_mask() is None:
        pytest.skip("the previous implementation needs a git checkout")
    hu = None
    if case.startswith("from_hu"):
        if dataset not in _HU_CACHE:
            _HU_CACHE[dataset] = load_hu(folder)
        hu = _HU_CACHE[dataset]
    benchmark.group = f"lung segmentation: {dataset}"
    result = benchmark.pedantic(run_case, args=(case, folder, hu), rounds=3, warmup_rounds=1)
    assert result["right_ml"] > 0 and result["left_ml"] > 0
    benchmark.extra_info["seconds_per_100_slices"] = round(benchmark.stats.stats.median * 100 / result["slices"], 2)
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
