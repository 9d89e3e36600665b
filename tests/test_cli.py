"""The command line: scan, summarize, export, demo, show-config, and its error lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import ctframe
from ctframe.cli import app
from ctframe.testing import write_phantom_cohort

runner = CliRunner()
SCAN_ONLY = "cohort:\n  regions: [scan]\n"


def ctframe_cmd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script in a subprocess."""
    exe = Path(sys.executable).with_name("ctframe")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "ctframe.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def cohort_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-cohort")
    write_phantom_cohort(root, n_patients=2, n_time_points=2, shape=(24, 64, 64), spacing_mm=(8.0, 5.6, 5.6))
    return root


@pytest.fixture(scope="module")
def scan_only_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "scan-only.yaml"
    path.write_text(SCAN_ONLY)
    return path


# --------------------------------------------------------------------------- scan


def test_scan__subprocess_on_shared_data_writes_the_series_table(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "series.parquet"
    result = ctframe_cmd("scan", str(shared_data), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    table = pd.read_parquet(out)
    lidc = table[table["n_slices"] == 133]
    assert len(lidc) == 1 and lidc["spacing_median_mm"].iloc[0] == pytest.approx(2.5)
    tilted = table[table["n_slices"] == 54].iloc[0]
    assert tilted["is_tilted"] and tilted["tilt_angle_deg"] == pytest.approx(18.5, abs=0.1)
    assert "skipped" in result.stdout and "gzip-compressed" in result.stdout


def test_scan__csv_by_extension(lidc_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "series.csv"
    result = runner.invoke(app, ["scan", str(lidc_dir), "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert table["n_slices"].tolist() == [133]
    result = runner.invoke(app, ["scan", str(lidc_dir), "-o", str(out), "--quiet"])
    assert result.exit_code == 2 and "already exists" in result.output


# --------------------------------------------------------------------------- summarize


def test_summarize__subprocess_writes_complete_tables(
    cohort_root: Path, scan_only_config: Path, tmp_path: Path
) -> None:
    outdir = tmp_path / "out"
    result = ctframe_cmd("summarize", str(cohort_root), "-o", str(outdir), "--config", str(scan_only_config), "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    series = pd.read_parquet(outdir / "series.parquet")
    assert len(series) == 4 and series["selected"].all()
    regions = pd.read_parquet(outdir / "regions.parquet")
    assert set(regions["region"]) == {"scan"} and len(regions) == 4
    hist = pd.read_parquet(outdir / "histograms.parquet")
    # series-level counts add up to the region voxel counts
    per_series = hist[hist["level"] == "series"].groupby("series")["count"].sum()
    pd.testing.assert_series_equal(
        per_series.sort_index(), regions.set_index("series")["voxel_count"].sort_index(), check_names=False
    )
    cohort_total = hist[hist["level"] == "cohort"]["count"].sum()
    assert cohort_total == regions["voxel_count"].sum()
    provenance = json.loads((outdir / "provenance.json").read_text())
    assert provenance["inputs"]["n_files"] == 4 * 24
    assert provenance["versions"]["ctframe"] == ctframe.__version__
    assert provenance["config"]["cohort"]["regions"] == ["scan"]
    checksums = pd.read_csv(outdir / "input_checksums.csv")
    assert checksums["sha256"].str.len().eq(64).all()
    assert pd.read_csv(outdir / "problems.csv").empty


def test_summarize__existing_outdir_needs_overwrite(cohort_root: Path, scan_only_config: Path, tmp_path: Path) -> None:
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "keep.txt").write_text("mine")
    args = ["summarize", str(cohort_root), "-o", str(outdir), "-c", str(scan_only_config), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert (
        result.output.strip() == f"ctframe: error: {outdir} already exists; choose another folder or pass --overwrite"
    )
    assert (outdir / "keep.txt").exists()
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (outdir / "keep.txt").exists() and (outdir / "regions.parquet").exists()
    assert not list(tmp_path.glob(".out.*"))  # no temporary left beside it


def test_summarize__workers_option_runs_a_local_cluster(
    cohort_root: Path, scan_only_config: Path, tmp_path: Path
) -> None:
    threads = tmp_path / "threads"
    cluster = tmp_path / "cluster"
    for outdir, extra in ((threads, []), (cluster, ["--workers", "2"])):
        result = runner.invoke(
            app, ["summarize", str(cohort_root), "-o", str(outdir), "-c", str(scan_only_config), "-q", *extra]
        )
        assert result.exit_code == 0, result.output
    for name in ("regions.parquet", "histograms.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(threads / name), pd.read_parquet(cluster / name))
    assert json.loads((cluster / "provenance.json").read_text())["scheduler"] == "LocalCluster(2 workers)"


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d: ["summarize", str(d / "missing"), "-o", str(d / "o")], r"missing: no such file or folder"),
        (lambda d: ["scan", str(d / "missing")], r"missing: no such file or folder"),
        (lambda d: ["summarize", str(d / "empty"), "-o", str(d / "o")], r"no DICOM image found"),
        (lambda d: ["scan", str(d / "empty")], r"no DICOM image found"),
        (lambda d: ["summarize", str(d / "cohort"), "-o", str(d / "o"), "-c", str(d / "bad.yaml")],
         r"config key 'histogram.bin_width_hu' is 0; it must lie in \[1, 4096\]"),
        (lambda d: ["summarize", str(d / "cohort"), "-o", str(d / "o"), "-c", str(d / "typo.yaml")],
         r"unknown config key 'cohort.region'; allowed keys here: regions"),
        (lambda d: ["summarize", str(d / "cohort"), "-o", str(d / "ro" / "sub" / "o"), "-c", str(d / "scan.yaml")],
         r"cannot write to .*ro/sub"),
        (lambda d: ["summarize", str(d / "cohort"), "-o", str(d / "o"), "--workers", "2", "--scheduler", "tcp://x:1"],
         r"either --scheduler or --workers"),
        (lambda d: ["export", str(d / "cohort"), "-o", str(d / "x.nii"), "--format", "dicom"],
         r"--format must be one of zarr, nifti, netcdf"),
        (lambda d: ["export", str(d / "cohort"), "-o", str(d / "x.nii")],
         r"holds 4 series/stacks; choose one with --series KEY"),
        (lambda d: ["show-config", "-c", str(d / "missing.yaml")], r"cannot read config file"),
    ],
)  # fmt: skip
def test_cli__bad_input_gives_one_line_and_exit_2(tmp_path: Path, cohort_root: Path, make_args, message: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not dicom")
    (tmp_path / "cohort").symlink_to(cohort_root)
    (tmp_path / "bad.yaml").write_text("histogram:\n  bin_width_hu: 0\n")
    (tmp_path / "typo.yaml").write_text("cohort:\n  region: [scan]\n")
    (tmp_path / "scan.yaml").write_text(SCAN_ONLY)
    (tmp_path / "ro").write_text("a file where a folder is expected")
    result = runner.invoke(app, make_args(tmp_path))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("ctframe: error:")]
    assert len(lines) == 1, result.output
    assert pytest.approx(0) == len([line for line in result.output.splitlines() if "Traceback" in line])
    import re

    assert re.search(message, lines[0]), lines[0]


def test_cli__unwritable_output_in_a_subprocess(cohort_root: Path, scan_only_config: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = ctframe_cmd("summarize", str(cohort_root), "-o", str(blocker / "out"), "-c", str(scan_only_config), "-q")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("ctframe: error: cannot write to")
    assert len(result.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- export


def test_export__nifti_round_trip_lidc(lidc_dir: Path, tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    out = tmp_path / "lidc.nii.gz"
    result = ctframe_cmd("export", str(lidc_dir), "--format", "nifti", "-o", str(out), "-q")
    assert result.returncode == 0, result.stderr
    image = nib.load(out)
    hu = ctframe.to_hu(ctframe.open_series(lidc_dir))
    np.testing.assert_array_equal(np.asarray(image.dataobj), hu.transpose("col", "row", "slice").values)
    first = hu.isel(slice=0)
    lps = np.array([float(first[c]) for c in ("position_x_mm", "position_y_mm", "position_z_mm")])
    ras = lps * np.array([-1, -1, 1])
    np.testing.assert_allclose(image.affine @ np.array([0, 0, 0, 1.0]), [*ras, 1.0], atol=1e-5)
    # one step along the file's third axis is one slice (2.5 mm superior here)
    np.testing.assert_allclose(image.affine[:3, 2], [0, 0, 2.5], atol=1e-6)
    np.testing.assert_allclose(image.header.get_zooms(), (0.703125, 0.703125, 2.5), atol=1e-6)


@pytest.mark.parametrize("fmt", ["zarr", "netcdf"])
def test_export__xarray_formats_keep_coords_and_safe_attrs(lidc_dir: Path, tmp_path: Path, fmt: str) -> None:
    import xarray as xr

    out = tmp_path / ("lidc.zarr" if fmt == "zarr" else "lidc.nc")
    result = runner.invoke(app, ["export", str(lidc_dir), "--format", fmt, "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    ds = xr.open_zarr(out) if fmt == "zarr" else xr.open_dataset(out, engine="netcdf4")
    hu = ctframe.to_hu(ctframe.open_series(lidc_dir))
    np.testing.assert_array_equal(ds["hu"].values, hu.values)
    np.testing.assert_array_equal(ds["slice"].values, hu["slice"].values)
    np.testing.assert_array_equal(ds["rescale_intercept"].values, hu["rescale_intercept"].values)
    assert ds.attrs["series_uid"] == hu.attrs["series_uid"] and ds.attrs["units"] == "HU"
    assert "LIDC-IDRI-0001" not in json.dumps({k: str(v) for k, v in ds.attrs.items()})
    ds.close()


# --------------------------------------------------------------------------- misc


def test_show_config__prints_merged_yaml(scan_only_config: Path) -> None:
    import yaml

    result = runner.invoke(app, ["show-config", "-c", str(scan_only_config)])
    assert result.exit_code == 0
    shown = yaml.safe_load(result.output)
    assert shown["cohort"]["regions"] == ["scan"]
    assert shown["io"]["slices_per_chunk"] == 32


def test_cli__help_everywhere() -> None:
    for command in ([], ["scan"], ["summarize"], ["demo"], ["export"], ["show-config"]):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, command


def test_demo__phantom_cohort_summary_with_lungs(tmp_path: Path) -> None:
    outdir = tmp_path / "demo"
    result = ctframe_cmd("demo", "-o", str(outdir), "--patients", "2")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and str(outdir / "summary") in result.stderr
    regions = pd.read_parquet(outdir / "summary" / "regions.parquet")
    assert set(regions["region"]) == {"scan", "body", "lungs", "right_lung", "left_lung"}
    lungs = regions[regions["region"] == "lungs"]
    assert len(lungs) == 4 and lungs["volume_ml"].between(2000, 8000).all()
    longitudinal = pd.read_parquet(outdir / "summary" / "longitudinal.parquet")
    haa = longitudinal[longitudinal["measure"] == "lung_haa_volume_ml"]
    assert haa["patient_key"].nunique() == 2
    assert (haa[haa["days_since_baseline"] > 0]["change_from_baseline"] > 10).all()
    assert len(list((outdir / "dicom").rglob("*.dcm"))) == 2 * 2 * 64
