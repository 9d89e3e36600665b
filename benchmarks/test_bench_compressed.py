"""Compressed series to HU: slices per second, ctframe vs SimpleITK vs a pydicom loop.

Each syntax is a 100-slice 512 x 512 phantom written once (lossless: RLE, JPEG
Lossless SV1, JPEG-LS, JPEG 2000).

Run: python -m pytest benchmarks/test_bench_compressed.py --benchmark-only --benchmark-columns=median,iqr,rounds
"""

from __future__ import annotations

import pytest
from conftest import phantom_folder
from test_bench_io import METHODS

SYNTAXES = ["rle", "jpeg-lossless", "jpeg-ls", "jpeg2000"]
N_SLICES = 100


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("syntax", SYNTAXES)
def test_bench_compressed_to_hu(benchmark, syntax: str, method: str) -> None:
    folder = phantom_folder(
        f"compressed-{syntax}", shape=(N_SLICES, 512, 512), spacing_mm=(2.0, 0.7, 0.7), compression=syntax, seed=7
    )
    benchmark.group = f"compressed to HU: {syntax}"
    result = benchmark.pedantic(METHODS[method], args=(folder,), rounds=5, warmup_rounds=1)
    assert result.shape == (N_SLICES, 512, 512)
    benchmark.extra_info["slices_per_second"] = round(N_SLICES / benchmark.stats.stats.median, 1)
