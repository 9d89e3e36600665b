"""Exports: NIfTI equal to dcm2niix's, the fill value, one grid or a refusal, resampling, option checks, warnings."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pydicom
import pytest
import xarray as xr
from typer.testing import CliRunner

import ctframe
from ctframe.cli import app
from ctframe.export import grid_problem, resample_slices, to_netcdf, to_nifti, to_zarr

nib = pytest.importorskip("nibabel")
runner = CliRunner()

#: The four real series compared with dcm2niix (relative to the shared data folder).
DCM2NIIX_SERIES = {
    "lidc": "lidc-idri-0001",
    "dcm_qa_ct_notilt": "dcm_qa_ct/Philips_S2010_brain5mm_notilt",
    "lung1_003": "nsclc-radiomics-lung1-003/ct",
    "lung_pet_ct_dx_a0001": "lung-pet-ct-dx-a0001/ct",
}
TILT = "dcm_qa_ct/Philips_S21610_S2010_tilt-18.5"


def find_dcm2niix() -> str:
    """Path of dcm2niix; skip without it, fail under CI=true (.ci/run installs it)."""
    path = shutil.which("dcm2niix")
    if path:
        return path
    message = "dcm2niix not found (Debian package 'dcm2niix', installed by .ci/run)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; CI must provide it")
    pytest.skip(message)


def run_dcm2niix(folder: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [find_dcm2niix(), "-z", "n", "-b", "n", "-f", "ref", "-o", str(out), str(folder)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return sorted(out.glob("*.nii"))


def open_hu(folder: Path) -> xr.DataArray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctframe.QCWarning)  # the tilted series warns; tested elsewhere
        return ctframe.to_hu(ctframe.open_series(folder))


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ctframe: error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def ipp_by_position(folder: Path) -> list[tuple[float, Path]]:
    """(z of ImagePositionPatient, file) of every slice, from pydicom, in position order."""
    rows = []
    for path in folder.iterdir():
        if path.suffix == ".dcm":
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            rows.append((float(ds.ImagePositionPatient[2]), path))
    return sorted(rows)


# --------------------------------------------------------------------------- equal to dcm2niix


@pytest.mark.parametrize("name", list(DCM2NIIX_SERIES))
def test_to_nifti__equals_dcm2niix(name: str, shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / DCM2NIIX_SERIES[name]
    references = run_dcm2niix(folder, tmp_path / "dcm2niix")
    assert len(references) == 1, references  # one series, no tilt-corrected second file
    reference = nib.load(references[0])
    hu = open_hu(folder).compute()  # read once, written and compared
    ours = nib.load(to_nifti(hu, tmp_path / "ctframe.nii"))
    # both transforms set, with dcm2niix's codes, and equal
    header = ours.header
    assert int(header["qform_code"]) == int(reference.header["qform_code"]) == 1
    assert int(header["sform_code"]) == int(reference.header["sform_code"]) == 1
    np.testing.assert_allclose(ours.get_qform(), ours.get_sform(), atol=1e-4)
    # compare in world space: both to the closest RAS-canonical voxel order
    ref_c, ours_c = nib.as_closest_canonical(reference), nib.as_closest_canonical(ours)
    assert ref_c.shape == ours_c.shape
    np.testing.assert_allclose(ours_c.affine, ref_c.affine, atol=1e-4)
    hu_c = nib.as_closest_canonical(nib.Nifti1Image(hu.transpose("col", "row", "slice").values, ours.affine))
    finite = np.isfinite(np.asarray(hu_c.dataobj))
    expected = ref_c.get_fdata()  # dcm2niix stores integers with scl_slope/scl_inter; get_fdata applies them
    got = np.asarray(ours_c.dataobj)
    assert finite.sum() > 0.5 * finite.size
    np.testing.assert_allclose(got[finite], expected[finite], rtol=0, atol=1e-3)
    assert (got[~finite] == -1024).all()  # NaN became the NIfTI default fill


# --------------------------------------------------------------------------- fill value


def test_export__fill_value_in_nifti_and_zarr(lidc_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", str(lidc_dir), "-o", str(tmp_path / "a.nii"), "--fill-value", "-2000", "-q"])
    assert result.exit_code == 0, result.output
    hu = ctframe.to_hu(ctframe.open_series(lidc_dir)).transpose("col", "row", "slice").values
    data = np.asarray(nib.load(tmp_path / "a.nii").dataobj)
    nan = np.isnan(hu)
    assert nan.mean() > 0.1  # LIDC: about 21% outside the reconstruction circle
    assert (data[nan] == -2000).all()
    np.testing.assert_array_equal(data[~nan], hu[~nan])
    # Zarr and NetCDF keep NaN by default; a number replaces it and is recorded
    part = ctframe.to_hu(ctframe.open_series(lidc_dir)).isel(slice=slice(0, 3))
    kept = xr.open_zarr(to_zarr(part, tmp_path / "kept.zarr"))
    np.testing.assert_array_equal(np.isnan(kept["hu"].values), np.isnan(part.values))
    filled = xr.open_dataset(to_netcdf(part, tmp_path / "filled.nc", fill_value=-1024), engine="netcdf4")
    np.testing.assert_array_equal(filled["hu"].values, np.where(np.isnan(part.values), -1024, part.values))
    assert filled["hu"].attrs["nan_written_as"] == -1024
    kept.close()
    filled.close()
    # NIfTI keeps NaN only when asked
    as_nan = np.asarray(nib.load(to_nifti(part, tmp_path / "nan.nii", fill_value=math.nan)).dataobj)
    np.testing.assert_array_equal(np.isnan(as_nan), np.isnan(part.transpose("col", "row", "slice").values))


def test_export__help_states_the_fill_defaults() -> None:
    result = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "300"})
    text = " ".join(result.output.split())
    assert "-1024 for NIfTI, nan for Zarr and NetCDF" in text and "--resample-mm" in text


# --------------------------------------------------------------------------- options checked first


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "x.mha"], r"--output 'x.mha' has no known suffix; end it in .zarr \(zarr\), .nii \(nifti\)"),
        (["-o", "x"], r"--output 'x' has no known suffix"),
        (["-o", "x.nii.gz", "-f", "zarr"], r"--format zarr does not match --output 'x.nii.gz' \(a nifti name\)"),
        (["-o", "x.zarr", "-f", "nifti"], r"--format nifti does not match --output 'x.zarr'"),
        (["-o", "x.nc", "--format", "nifti"], r"--format nifti does not match --output 'x.nc' \(a netcdf name\)"),
        (["-o", "x.nii", "-f", "dicom"], r"--format must be one of zarr, nifti, netcdf, got 'dicom'"),
        (["-o", "x.nii", "--fill-value", "inf"], r"--fill-value must be a finite number or nan"),
        (["-o", "x.nii", "--resample-mm", "0"], r"--resample-mm must be a positive number of mm, got 0.0"),
        (["-o", "x.nii", "--resample-mm", "nan"], r"--resample-mm must be a positive number"),
        (["-o", "x.nii", "--resample-mm", "2", "--stored"], r"--resample-mm resamples HU; leave out --stored"),
        (["-o", "exists.nii"], r"exists.nii already exists; choose another path or pass --overwrite"),
        (["-o", "y.nii.gz", "--labels"], r"y_labels.nii.gz already exists"),
    ],
)  # fmt: skip
def test_export__bad_options_fail_before_any_scan(
    args: list[str], message: str, lidc_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    def no_scan(*_: object, **__: object) -> None:
        raise AssertionError("the series was opened before the options were checked")

    monkeypatch.setattr(ctframe, "open_series", no_scan)
    (tmp_path / "exists.nii").write_bytes(b"")
    (tmp_path / "y_labels.nii.gz").write_bytes(b"")
    before = sorted(tmp_path.iterdir())
    args = [str(tmp_path / a) if a.startswith(("x", "exists", "y.")) else a for a in args]
    result = runner.invoke(app, ["export", str(lidc_dir), *args])
    assert result.exit_code == 2, result.output
    line = one_line_error(result)
    assert re.search(message, line), line
    assert ".partial" not in result.output and "internal error" not in line
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_export__mha_in_a_subprocess_is_one_line(lidc_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("ctframe")), "export", str(lidc_dir), "-o", str(tmp_path / "x.mha")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "ctframe: error: --output 'x.mha' has no known suffix; end it in .zarr (zarr), .nii (nifti), "
        ".nii.gz (nifti), .nc (netcdf)"
    ]
    assert not list(tmp_path.iterdir())


def test_writers__refuse_other_suffixes(lidc_dir: Path, tmp_path: Path) -> None:
    part = ctframe.to_hu(ctframe.open_series(lidc_dir)).isel(slice=slice(0, 2))
    with pytest.raises(ctframe.ParameterError, match=r"to_nifti writes .nii or .nii.gz files, got 'x.mha'"):
        to_nifti(part, tmp_path / "x.mha")
    with pytest.raises(ctframe.ParameterError, match=r"to_zarr writes .zarr files, got 'x.nii.gz'; nifti is"):
        to_zarr(part, tmp_path / "x.nii.gz")
    with pytest.raises(ctframe.ParameterError, match=r"to_netcdf writes .nc files"):
        to_netcdf(part, tmp_path / "x.zarr")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- warnings


def test_to_zarr__no_library_warnings_but_data_warnings_pass(lidc_dir: Path, tmp_path: Path) -> None:
    part = ctframe.to_hu(ctframe.open_series(lidc_dir)).isel(slice=slice(0, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        to_zarr(part, tmp_path / "a.zarr")
    assert [str(w.message) for w in caught] == []

    # a warning about the data, raised while the writer computes, still reaches the caller
    def warn(block: np.ndarray) -> np.ndarray:
        warnings.warn("odd voxels in this block", ctframe.QCWarning, stacklevel=1)
        return block

    lazy = part.copy(data=da.from_array(part.values, chunks=(1, -1, -1)).map_blocks(warn, dtype=part.dtype))
    with pytest.warns(ctframe.QCWarning, match="odd voxels"):
        to_zarr(lazy, tmp_path / "b.zarr")
    # and the CLI prints no ctframe warning for a clean Zarr export
    result = runner.invoke(app, ["export", str(lidc_dir), "-o", str(tmp_path / "c.zarr")])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output.lower(), result.output
    assert xr.open_zarr(tmp_path / "c.zarr")["hu"].shape == (133, 512, 512)


# --------------------------------------------------------------------------- one grid, or resampled


@pytest.fixture
def dropped(lidc_dir: Path, tmp_path: Path) -> tuple[Path, float, int]:
    """LIDC with slice 60 (in position order) left out: its folder, the dropped z (pydicom), and 60."""
    slices = ipp_by_position(lidc_dir)
    folder = tmp_path / "dropped"
    folder.mkdir()
    for k, (_, path) in enumerate(slices):
        if k != 60:
            (folder / path.name).symlink_to(path)
    return folder, slices[60][0], 60


def test_nifti__a_stack_with_a_gap_is_refused_with_the_reason(dropped, tmp_path: Path) -> None:
    folder, _, _ = dropped
    result = runner.invoke(app, ["export", str(folder), "-o", str(tmp_path / "g.nii.gz")])
    assert result.exit_code == 2, result.output
    line = one_line_error(result)
    assert "not one NIfTI grid (has_gaps: 1 gap(s) between slices (a step of 5 mm" in line, line
    assert "pass --resample-mm MM" in line and "to_nifti" not in line
    assert not (tmp_path / "g.nii.gz").exists()
    with pytest.warns(ctframe.QCWarning, match="gaps"):
        hu = ctframe.to_hu(ctframe.open_series(folder))
    assert grid_problem(hu)[0] == "has_gaps"
    with pytest.raises(ctframe.ParameterError, match=r"has_gaps.*to_nifti\(\.\.\., resample_mm=\.\.\.\)"):
        to_nifti(hu, tmp_path / "g.nii")
    # Zarr keeps each slice's position: allowed, and the positions are the real ones
    result = runner.invoke(app, ["export", str(folder), "-o", str(tmp_path / "g.zarr"), "-q"])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(xr.open_zarr(tmp_path / "g.zarr")["position_z_mm"].values, hu["position_z_mm"].values)


def test_resample__a_dropped_slice_is_interpolated_at_its_position(dropped, lidc_dir: Path, tmp_path: Path) -> None:
    folder, z_dropped, k = dropped
    full = ctframe.to_hu(ctframe.open_series(lidc_dir))
    with pytest.warns(ctframe.QCWarning, match="gaps"):
        gap = ctframe.to_hu(ctframe.open_series(folder))
    result = runner.invoke(app, ["export", str(folder), "-o", str(tmp_path / "r.nii"), "--resample-mm", "2.5", "-q"])
    assert result.exit_code == 0, result.output
    image = nib.load(tmp_path / "r.nii")
    # the regular grid is the full series' grid: same affine (from pydicom's positions), qform = sform
    assert image.shape == (512, 512, 133)
    z = np.array([z for z, _ in ipp_by_position(lidc_dir)])
    np.testing.assert_allclose(image.affine[2, 3], z[0], atol=1e-4)
    np.testing.assert_allclose(image.affine[:3, :3], nib.load(to_nifti(full, tmp_path / "f.nii")).affine[:3, :3],
                               atol=1e-4)  # fmt: skip
    np.testing.assert_allclose(image.get_qform(), image.get_sform(), atol=1e-4)
    np.testing.assert_allclose(image.affine[2, 3] + 2.5 * k, z_dropped, atol=1e-4)
    data = np.asarray(image.dataobj).transpose(2, 1, 0)  # (slice, row, col)
    truth = full.values
    real = np.isfinite(truth[k])
    # every other slice is the real one, the dropped one is close to it but not equal
    for j in (k - 1, k + 1, 0, 132):
        np.testing.assert_array_equal(data[j][np.isfinite(truth[j])], truth[j][np.isfinite(truth[j])])
    diff = np.abs(data[k][real] - truth[k][real])
    assert 0 < np.median(diff) < 40, np.median(diff)  # linear between neighbours 2.5 mm either side
    assert not np.array_equal(data[k][real], truth[k][real])
    halfway = np.nan_to_num((truth[k - 1] + truth[k + 1]) / 2, nan=-1024)  # NaN beside NaN, then the fill
    np.testing.assert_allclose(data[k], halfway, rtol=1e-6)
    # in Python: the same slice, at the dropped position
    resampled = resample_slices(gap, 2.5)
    np.testing.assert_allclose(float(resampled["position_z_mm"][k]), z_dropped, atol=1e-6)
    np.testing.assert_array_equal(np.nan_to_num(resampled.values[k], nan=-1024), data[k])


def test_resample__a_regular_series_at_its_own_spacing_is_unchanged(shared_data: Path) -> None:
    hu = open_hu(shared_data / DCM2NIIX_SERIES["dcm_qa_ct_notilt"])
    again = resample_slices(hu, 5.0)
    np.testing.assert_array_equal(again.values, hu.values)
    for c in ("slice", "position_x_mm", "position_y_mm", "position_z_mm"):
        np.testing.assert_allclose(again[c].values, hu[c].values, atol=1e-9)
    np.testing.assert_allclose(again.ct.affine, hu.ct.affine, atol=1e-9)
    assert again.attrs["resampled_slice_mm"] == 5.0
    with pytest.raises(ctframe.ParameterError, match="resample HU, not stored values"):
        resample_slices(ctframe.open_series(shared_data / DCM2NIIX_SERIES["dcm_qa_ct_notilt"]), 5.0)
    with pytest.raises(ctframe.ParameterError, match="spacing_mm must be a positive number"):
        resample_slices(hu, -1)


# --------------------------------------------------------------------------- gantry tilt


def test_nifti__tilt_refused_sheared_on_request_resampled_orthogonal(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / TILT
    result = runner.invoke(app, ["export", str(folder), "-o", str(tmp_path / "t.nii.gz")])
    assert result.exit_code == 2
    assert "(is_tilted: the slices advance 18.50 degrees off their normal" in one_line_error(result)
    hu = open_hu(folder)
    with pytest.raises(ctframe.ParameterError, match="is_tilted"):
        to_nifti(hu, tmp_path / "t.nii")
    sheared = nib.load(to_nifti(hu, tmp_path / "sheared.nii", allow_shear=True))
    assert int(sheared.header["qform_code"]) == 0 and int(sheared.header["sform_code"]) == 1
    # resampled along the normal: an orthogonal grid, qform = sform, voxels placed as dcm2niix's tilt correction
    image = nib.load(to_nifti(hu, tmp_path / "r.nii", resample_mm=2.0))
    assert int(image.header["qform_code"]) == int(image.header["sform_code"]) == 1
    np.testing.assert_allclose(image.get_qform(), image.get_sform(), atol=1e-4)
    axes = image.affine[:3, :3] / np.linalg.norm(image.affine[:3, :3], axis=0)
    np.testing.assert_allclose(axes.T @ axes, np.eye(3), atol=1e-6)
    corrected = [p for p in run_dcm2niix(folder, tmp_path / "dcm2niix") if "Tilt" in p.name]
    assert len(corrected) == 1
    reference = nib.load(corrected[0])
    ours = np.asarray(image.dataobj)
    # sample dcm2niix's corrected volume at our voxel centres (world space), where both have data
    from scipy import ndimage

    ii, jj, kk = np.meshgrid(np.arange(0, 512, 8), np.arange(0, 512, 8), np.arange(0, ours.shape[2], 3), indexing="ij")
    world = image.affine @ np.stack([ii.ravel(), jj.ravel(), kk.ravel(), np.ones(ii.size)])
    index = np.linalg.inv(reference.affine) @ world
    theirs = ndimage.map_coordinates(reference.get_fdata(), index[:3], order=1, cval=np.nan)
    mine = ours[ii.ravel(), jj.ravel(), kk.ravel()]
    both = np.isfinite(theirs) & (mine > -1024) & (theirs > -1024)
    assert both.sum() > 1000
    diff = np.abs(mine[both] - theirs[both])
    # measured: 90th percentile 0.36 HU, correlation 0.9999999 (without the in-plane shift: 814 HU, 0.36)
    assert np.percentile(diff, 90) < 2 and np.corrcoef(mine[both], theirs[both])[0, 1] > 0.999, np.percentile(diff, 90)
