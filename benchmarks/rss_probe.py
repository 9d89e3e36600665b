"""Cohort-histogram methods for the benchmarks, and a peak-RSS probe.

``python benchmarks/rss_probe.py METHOD N`` runs METHOD once over N cached
phantom series in this fresh process and prints one JSON line:
``{"seconds": ..., "peak_rss_mib": ..., "baseline_rss_mib": ...}`` where the
peak is the process's VmHWM and the baseline its RSS after imports, before
any pixel is read. :func:`run_and_sample` adds the peak PSS of the whole
process tree (worker processes included).

Every method returns counts over the same 1-HU bins, -1024 .. 3071 HU
(4096 bins; values outside are dropped), so results can be compared.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

EDGES = np.arange(-1024, 3073)
#: From this bin on (HU >= -1000) every method agrees; below, ctframe and the floor
#: drop padding and fill (-3024 HU) while the plain readers count what is in range.
TISSUE_FROM_BIN = 24


def median_of_probes(method: str, n_series: int, probes: int = 3) -> dict:
    """:func:`run_and_sample` `probes` times; the median peak PSS, with every probe's value.

    One probe's peak moves by about 15 MiB from run to run (where the 10 ms
    sampling lands, allocator timing), as much as the effect measured.
    """
    runs = [run_and_sample(method, n_series) for _ in range(probes)]
    peaks = sorted(r["peak_tree_pss_mib"] for r in runs)
    result = dict(runs[0])
    result["peak_tree_pss_mib"] = peaks[len(peaks) // 2]
    result["peak_tree_pss_mib_probes"] = peaks
    return result


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as fp:
        for line in fp:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_and_sample(method: str, n_series: int) -> dict:
    """Run this file as a probe for `method` and sample the memory of its whole process tree.

    The tree's memory is the sum of each process's PSS (proportional set size),
    so pages that forked workers share with their parent count once.

    Sampling happens here, in the parent, every 10 ms: a sampling thread inside
    the probe would change what is measured (ctframe forks header readers only
    from a single-threaded process), and ``ru_maxrss`` is no use because Linux
    carries it over fork and exec.
    """
    import subprocess

    import psutil

    proc = subprocess.Popen(
        [sys.executable, __file__, method, str(n_series)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak = 0.0
    watched = psutil.Process(proc.pid)
    while proc.poll() is None:
        total = 0
        try:
            for member in [watched, *watched.children(recursive=True)]:
                total += member.memory_full_info().pss  # shared (forked) pages counted once
        except psutil.Error:
            pass
        peak = max(peak, total / 2**20)
        time.sleep(0.01)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"probe {method} {n_series} failed: {err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_tree_pss_mib"] = round(peak, 1)
    return result


def notebook(folders: list[Path]) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    counts = np.zeros(len(EDGES) - 1, np.int64)
    for folder in folders:
        slices = []
        for path in sorted(folder.glob("*.dcm")):
            ds = pydicom.dcmread(path)
            slices.append((float(ds.ImagePositionPatient[2]), apply_modality_lut(ds.pixel_array, ds)))
        slices.sort(key=lambda s: s[0])
        volume = np.stack([s[1] for s in slices])
        counts += np.histogram(volume, bins=EDGES)[0]
    return counts


def simpleitk(folders: list[Path]) -> np.ndarray:
    import SimpleITK as sitk

    counts = np.zeros(len(EDGES) - 1, np.int64)
    for folder in folders:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        image = reader.Execute()  # keep a reference: the array view borrows its memory
        counts += np.histogram(sitk.GetArrayViewFromImage(image), bins=EDGES)[0]
    return counts


def ctframe_threads(folders: list[Path], client: object = None) -> np.ndarray:
    import ctframe

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctframe.CTFrameWarning)
        catalog = ctframe.scan(folders)
    return _ctframe_counts(catalog, client)


_CATALOGS: dict[tuple[Path, ...], object] = {}


def _cached_catalog(folders: list[Path]) -> object:
    """The catalog of one header pass per cohort, shared by the floor and ``ctframe_catalog_given``."""
    import ctframe

    key = tuple(folders)
    if key not in _CATALOGS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ctframe.CTFrameWarning)
            _CATALOGS[key] = ctframe.scan(folders)
    return _CATALOGS[key]


def ctframe_catalog_given(folders: list[Path], client: object = None) -> np.ndarray:
    """``ctframe_threads`` with the catalog of an earlier scan (scan once, analyse many times).

    The scan is done once per cohort and not timed (the warm-up round pays
    it), as the floor's header pass: this is ctframe's side of the comparison
    with the floor.
    """
    return _ctframe_counts(_cached_catalog(folders), client)


def _ctframe_counts(catalog: object, client: object) -> np.ndarray:
    """``open_cohort`` + ``summarize(regions=["scan"])`` over the catalog: the cohort's 1-HU counts."""
    import ctframe
    from ctframe.cohort import open_cohort, summarize

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctframe.CTFrameWarning)
        cohort = open_cohort(catalog)
    table = summarize(
        cohort, regions=["scan"], levels=("cohort",), bins={"min_hu": -1024, "max_hu": 3072, "bin_width_hu": 1},
        scheduler=client, progress=False,
    ).histograms  # fmt: skip
    return table["count"].to_numpy()[1:-1]  # drop under- and overflow


def ctframe_cluster(folders: list[Path], client: object = None) -> np.ndarray:
    if client is None:
        import distributed

        from ctframe.execution import local_cluster

        with local_cluster(2) as cluster, distributed.Client(cluster) as own:
            return ctframe_threads(folders, client=own)
    return ctframe_threads(folders, client=client)


def _floor_chunk(jobs: list[tuple[str, int, int]]) -> np.ndarray:
    """Stored-value counts of a chunk of files: bytes at their offset, one bincount each, summed."""
    total = np.zeros(65536, np.int64)
    for path, offset, count in jobs:
        data = np.fromfile(path, dtype="<i2", count=count, offset=offset)
        total += np.bincount(data.astype(np.int32) + 32768, minlength=65536)
    return total


_FLOOR_JOBS: dict[tuple[Path, ...], list[list[tuple[str, int, int]]]] = {}


def _floor_jobs(folders: list[Path]) -> list[list[tuple[str, int, int]]]:
    """Where each file's pixels are, from a header pass done once per cohort (outside the floor's timing)."""
    key = tuple(folders)
    if key not in _FLOOR_JOBS:
        catalog = _cached_catalog(folders)
        jobs = [
            (p, int(o), int(r * c))
            for p, o, r, c in catalog[["path", "pixel_data_offset", "rows", "columns"]].itertuples(index=False)
        ]
        _FLOOR_JOBS[key] = [jobs[i : i + 32] for i in range(0, len(jobs), 32)]
    return _FLOOR_JOBS[key]


def floor(folders: list[Path]) -> np.ndarray:
    """The floor: pixel bytes read at their offset and bincount per 32-file chunk, in 2 processes.

    The offsets come from a header pass done once per cohort and not timed
    (the warm-up round pays it), so this is the cost of the data alone.
    """
    chunks = _floor_jobs(folders)
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        by_value = sum(pool.map(_floor_chunk, chunks))
    return _floor_histogram(by_value)


_PIXEL_DATA_OW = b"\xe0\x7f\x10\x00OW\x00\x00"


def _floor_files(paths: list[str]) -> np.ndarray:
    """Stored-value counts of files found by name: a minimal header parse (the Pixel Data tag) and a bincount."""
    total = np.zeros(65536, np.int64)
    for path in paths:
        with open(path, "rb") as fp:
            data = fp.read()
        offset = data.find(_PIXEL_DATA_OW, 128) + 12  # the phantoms: explicit VR little endian, OW
        pixels = np.frombuffer(data, dtype="<i2", offset=offset)
        total += np.bincount(pixels.astype(np.int32) + 32768, minlength=65536)
    return total


def floor_with_headers(folders: list[Path]) -> np.ndarray:
    """The floor with its own header pass in the timing: list the files, find each one's pixels, count them.

    The fair counterpart of ``ctframe_threads`` (which scans inside the timed
    call): the same 2 processes and 32-file chunks as :func:`floor`, each file
    read once, its Pixel Data found by a minimal parse.
    """
    paths = sorted(str(p) for folder in folders for p in folder.iterdir() if p.is_file())
    chunks = [paths[i : i + 32] for i in range(0, len(paths), 32)]
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        by_value = sum(pool.map(_floor_files, chunks))
    return _floor_histogram(by_value)


def _floor_histogram(by_value: np.ndarray) -> np.ndarray:
    stored = np.arange(65536) - 32768
    hu = stored - 1024  # the phantoms' rescale: slope 1, intercept -1024
    keep = (hu >= EDGES[0]) & (hu < EDGES[-1]) & (stored != -2000)
    counts = np.zeros(len(EDGES) - 1, np.int64)
    np.add.at(counts, hu[keep] - EDGES[0], by_value[keep])
    return counts


METHODS = {
    "notebook": notebook,
    "simpleitk": simpleitk,
    "ctframe_threads": ctframe_threads,
    "ctframe_cluster": ctframe_cluster,
    "ctframe_catalog_given": ctframe_catalog_given,
    "floor": floor,
    "floor_with_headers": floor_with_headers,
}


def main() -> None:
    method, n_series = sys.argv[1], int(sys.argv[2])
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import phantom_cohort

    folders = phantom_cohort(n_series)
    import ctframe  # noqa: F401  (imports count in the baseline)

    baseline = _status_mib("VmRSS")
    start = time.perf_counter()
    METHODS[method](folders)
    seconds = time.perf_counter() - start
    print(json.dumps({"method": method, "n_series": n_series, "seconds": round(seconds, 3),
                      "peak_rss_mib": round(_status_mib("VmHWM"), 1), "baseline_rss_mib": round(baseline, 1),
                      "pid": os.getpid()}))  # fmt: skip


if __name__ == "__main__":
    main()
