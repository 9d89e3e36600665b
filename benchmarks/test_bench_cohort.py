"""Cohort HU histogram over 1, 2, 4 and 8 phantom series of 300 x 512 x 512, side by side.

Methods (same files, same run):

* ``notebook``: the notebook's way — a pydicom loop per series, stack, HU, ``np.histogram``;
* ``simpleitk``: SimpleITK's ``ImageSeriesReader`` per series, ``np.histogram``;
* ``ctframe_threads``: ``scan`` + ``open_cohort`` + ``summarize(regions=["scan"])`` on threads;
* ``ctframe_catalog_given``: the same with the catalog of an earlier ``scan`` (done once, not timed),
  which is what the floor gets too;
* ``ctframe_cluster``: the same on a 2-process ``LocalCluster`` (started outside the timing);
* ``floor``: pixel bytes read at their file offset and ``np.bincount`` per 32-file chunk, 2 processes
  (offsets from a header pass done once and not timed: the cost of the data alone);
* ``floor_with_headers``: the same with the files listed and each one's Pixel Data found by a minimal
  parse inside the timed call (the counterpart of ``ctframe_threads``, which scans inside it).

Peak memory of each method (PSS of the process tree) is measured in fresh subprocesses
(``benchmarks/rss_probe.py``): the median of three probes, stored in the benchmark's ``extra_info``.

Run::

    python -m pytest benchmarks/test_bench_cohort.py --benchmark-only \
        --benchmark-columns=median,iqr,rounds --benchmark-group-by=param:n_series
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import phantom_cohort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import rss_probe  # noqa: E402

N_SERIES = [1, 2, 4, 8]
METHODS = [
    "notebook", "simpleitk", "ctframe_threads", "ctframe_catalog_given", "ctframe_cluster", "floor",
    "floor_with_headers",
]  # fmt: skip


@pytest.fixture(scope="module")
def cluster_client():
    distributed = pytest.importorskip("distributed")
    from ctframe.execution import local_cluster

    with local_cluster(2) as cluster, distributed.Client(cluster) as client:
        yield client


@pytest.mark.parametrize("n_series", N_SERIES)
@pytest.mark.parametrize("method", METHODS)
def test_bench_cohort_histogram(benchmark, method: str, n_series: int, request) -> None:
    folders = phantom_cohort(n_series)
    benchmark.group = f"cohort histogram: {n_series} series"
    kwargs = {}
    if method == "ctframe_cluster":
        kwargs["client"] = request.getfixturevalue("cluster_client")
    func = rss_probe.METHODS[method]
    counts = benchmark.pedantic(func, args=(folders,), kwargs=kwargs, rounds=3, warmup_rounds=1)
    # every method counts the same voxels (the floor and ctframe drop padding/fill, the others keep it)
    assert counts.sum() > 0
    benchmark.extra_info.update(rss_probe.median_of_probes(method, n_series))


def test_bench_methods_agree_on_counts() -> None:
    """Not a timing: the histograms of all methods agree on tissue voxels."""
    folders = phantom_cohort(1)
    methods = ("notebook", "simpleitk", "ctframe_threads", "floor", "floor_with_headers")
    results = {m: rss_probe.METHODS[m](folders) for m in methods}
    tissue = slice(rss_probe.TISSUE_FROM_BIN, None)
    for name, counts in results.items():
        np.testing.assert_array_equal(counts[tissue], results["notebook"][tissue], err_msg=name)
