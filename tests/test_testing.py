"""The phantom writer: real DICOM that reads back to its own truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

import ctframe
from ctframe.testing import LABELS, raise_if_dask_computes, write_phantom_series


@pytest.mark.parametrize("compression", ["rle", "jpeg-ls", "jpeg2000", "jpeg-lossless"])
def test_write_phantom_series__compressed_reads_back_exactly(tmp_path: Path, compression: str) -> None:
    truth = write_phantom_series(tmp_path, shape=(4, 48, 48), spacing_mm=(5.0, 7.0, 7.0), compression=compression)
    catalog = ctframe.scan(tmp_path)
    assert catalog["is_compressed"].all() and not catalog["is_lossy"].any()
    np.testing.assert_array_equal(ctframe.to_hu(ctframe.open_series(catalog)).values, truth.hu)
    # pydicom's own decoders agree with what we read
    ds = pydicom.dcmread(truth.paths[0])
    np.testing.assert_array_equal(ds.pixel_array.astype(np.float32) - 1024, np.nan_to_num(truth.hu[0], nan=-3024))


def test_write_phantom_series__names_and_instance_numbers_mislead(small_phantom) -> None:
    by_position = [p.name for p in small_phantom.paths]
    assert by_position != sorted(by_position)
    numbers = [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in small_phantom.paths]
    assert numbers != sorted(numbers)


def test_write_phantom_series__truth_anatomy(phantom) -> None:
    labels = phantom.labels
    for name in ("right_lung", "left_lung", "airway", "bowel_gas", "table"):
        assert (labels == LABELS[name]).any(), name
    # right lung on the patient's right (-x in LPS, low column index here)
    cols = np.nonzero(labels == LABELS["right_lung"])[2]
    assert cols.mean() < labels.shape[2] / 2
    # lungs hold 1.5-3 L each; ground glass only at time point 1
    assert all(1500 < v < 3000 for v in phantom.lung_volume_ml.values())
    assert phantom.ggo_volume_ml > 20
    assert phantom.ggo.sum() * phantom.voxel_volume_ml == pytest.approx(phantom.ggo_volume_ml)
    # the stomach touches the left lung base across a slice boundary but not in-plane
    gas, left = labels == LABELS["bowel_gas"], labels == LABELS["left_lung"]
    assert (gas[:-1] & left[1:]).any()
    assert not (gas[:, 1:] & left[:, :-1]).any() and not (gas[:, :, 1:] & left[:, :, :-1]).any()


def test_write_phantom_series__tilt_truth_matches_read_back(tmp_path: Path) -> None:
    truth = write_phantom_series(tmp_path, shape=(10, 48, 48), spacing_mm=(4.0, 7.0, 7.0), tilt_deg=15.0)
    with pytest.warns(ctframe.QCWarning, match="gantry tilt"):
        volume = ctframe.open_series(tmp_path)
    with raise_if_dask_computes():
        hu = ctframe.to_hu(volume)
    np.testing.assert_array_equal(hu.values, truth.hu)
    assert truth.spacing_mm[0] == pytest.approx(float(np.diff(volume["slice"].values).mean()))


def test_write_phantom_series__bad_compression_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="compression must be one of"):
        write_phantom_series(tmp_path, compression="zip")


def test_raise_if_dask_computes__catches_a_compute(small_phantom) -> None:
    volume = ctframe.open_series(small_phantom.folder)
    with raise_if_dask_computes(), pytest.raises(RuntimeError, match="Too many computes"):
        volume.values  # noqa: B018
