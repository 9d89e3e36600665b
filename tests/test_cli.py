"""The command line: scan, summarize, export, demo, show-config, and its error lines."""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
import textwrap
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
        per_series.sort_index(),
        regions.set_index("series")["voxel_count"].sort_index(),
        check_names=False,
        check_dtype=False,  # voxel_count is a nullable integer (absent, not 0, where it cannot be computed)
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
    for outdir, extra in ((threads, ["-q"]), (cluster, ["--workers", "2"])):
        result = runner.invoke(
            app, ["summarize", str(cohort_root), "-o", str(outdir), "-c", str(scan_only_config), *extra]
        )
        assert result.exit_code == 0, result.output
    # off a terminal: the dashboard's address, then progress lines from the cluster's own feed, no bar
    assert re.search(r"^local cluster of 2 worker process\(es\); dashboard http://\S+/status$", result.stderr, re.M)
    assert re.search(r"^computing: done, \d+ tasks in [\d.]+ s$", result.stderr, re.M), result.stderr
    assert "\r" not in result.stderr
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
    expected = hu.transpose("col", "row", "slice").values
    assert np.isnan(expected).any()  # the scan circle: written as the NIfTI default fill, -1024
    np.testing.assert_array_equal(np.asarray(image.dataobj), np.where(np.isnan(expected), -1024.0, expected))
    assert int(image.header["qform_code"]) == int(image.header["sform_code"]) == 1
    np.testing.assert_allclose(image.get_qform(), image.get_sform(), atol=1e-4)
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


# --------------------------------------------------------------------------- bad input or a bug


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("ctframe: error:")]


BUGS = {
    "TypeError": TypeError("unsupported operand type(s) for +: 'int' and 'str'"),
    "ValueError": ValueError("operands could not be broadcast together"),
    "OSError": OSError(errno.EINVAL, "Invalid argument"),
    "KeyError": KeyError("rescale_slope"),
    # an errno of a user's path, but on a path the user did not give: ctframe's own file
    "FileNotFoundError": FileNotFoundError(errno.ENOENT, "No such file or directory", "/nonexistent/ctframe/lut.npy"),
}


def _inject_into_scan(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    """Make ctframe's header reading itself fail (a bug in ctframe's code, not a bad file)."""
    from ctframe import dicom

    def broken(*args, **kwargs):
        raise exc

    monkeypatch.setattr(dicom, "_geometry", broken)


@pytest.mark.parametrize("name", list(BUGS))
def test_cli__a_bug_is_exit_1_with_one_line_naming_the_class_and_debug(
    lidc_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    _inject_into_scan(monkeypatch, BUGS[name])
    result = runner.invoke(app, ["scan", str(lidc_dir), "-q"])
    assert result.exit_code == 1, result.output
    lines = _error_lines(result.output)
    assert len(lines) == 1 and len(result.stderr.strip().splitlines()) == 1, result.output
    line = lines[0]
    assert line.startswith("ctframe: error: internal error in ctframe (a bug, please report it): "), line
    assert f" {name}: " in line or line.endswith(name), line
    assert "rerun as `ctframe --debug scan ...` to see the traceback" in line
    assert "while ctframe.scan read the header of " + str(lidc_dir) in line  # the file that triggered it
    assert "Traceback" not in result.output


def test_cli__debug_shows_the_traceback_of_a_bug(lidc_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _inject_into_scan(monkeypatch, TypeError("injected bug"))
    result = runner.invoke(app, ["--debug", "scan", str(lidc_dir), "-q"])
    assert result.exit_code == 1
    assert isinstance(result.exception, TypeError) and "injected bug" in str(result.exception)
    assert not _error_lines(result.output)  # the traceback instead of the one line


BUG_SCRIPT = textwrap.dedent(
    """
    import sys
    from ctframe import outputs
    from ctframe.cli import run

    def broken(*args, **kwargs):
        raise TypeError("injected bug in write_summary")

    outputs.write_summary = broken
    sys.argv = ["ctframe", *sys.argv[1:]]
    run()
    """
)


@pytest.mark.parametrize("debug", [False, True])
def test_cli__summarize_bug_in_a_subprocess(
    lidc_dir: Path, scan_only_config: Path, tmp_path: Path, debug: bool
) -> None:
    """The real console: exit 1 and one line, or with --debug the traceback (and still exit 1)."""
    args = ["summarize", str(lidc_dir), "-o", str(tmp_path / "out"), "-c", str(scan_only_config), "-q"]
    result = subprocess.run(
        [sys.executable, "-c", BUG_SCRIPT, *(["--debug"] if debug else []), *args],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert not (tmp_path / "out").exists()
    if debug:
        assert "Traceback (most recent call last)" in result.stderr
        assert result.stderr.strip().splitlines()[-1] == "TypeError: injected bug in write_summary"
        assert "broken" in result.stderr  # the frame that raised it
    else:
        assert result.stderr.strip().splitlines() == [
            "ctframe: error: internal error in ctframe (a bug, please report it): TypeError: injected bug in "
            "write_summary; rerun as `ctframe --debug summarize ...` to see the traceback"
        ]


@pytest.mark.parametrize(
    ("make_exc", "code"),
    [
        # the user's own paths: the output given, a folder above it, a file under the input
        (lambda d: PermissionError(errno.EACCES, "Permission denied", str(d / "out" / "series.csv")), 2),
        (lambda d: PermissionError(errno.EACCES, "Permission denied", str(d)), 2),
        (lambda d: IsADirectoryError(errno.EISDIR, "Is a directory", str(d / "out" / "series.csv")), 2),
        # the machine: wherever it happens
        (lambda d: OSError(errno.ENOSPC, "No space left on device"), 2),
        (lambda d: OSError(errno.EROFS, "Read-only file system", "/somewhere/else"), 2),
        # the same errno on a path the user did not give, or an errno that is no user's to fix
        (lambda d: PermissionError(errno.EACCES, "Permission denied", "/etc/ctframe/internal.lock"), 1),
        (lambda d: OSError(errno.EBADF, "Bad file descriptor"), 1),
    ],
)  # fmt: skip
def test_cli__os_errors_on_the_users_paths_are_bad_input_others_are_bugs(
    lidc_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_exc, code: int
) -> None:
    import ctframe.outputs

    out = tmp_path / "out" / "series.csv"
    exc = make_exc(tmp_path)

    def failing_write(*args, **kwargs):
        raise exc

    monkeypatch.setattr(ctframe.outputs, "write_table", failing_write)
    result = runner.invoke(app, ["scan", str(lidc_dir), "-o", str(out), "-q"])
    assert result.exit_code == code, result.output
    lines = _error_lines(result.output)
    assert len(lines) == 1, result.output
    assert type(exc).__name__ in lines[0]
    assert ("internal error in ctframe" in lines[0]) == (code == 1), lines[0]


def test_cli__truncated_file_alone_is_bad_input_named_once(lidc_dir: Path, tmp_path: Path) -> None:
    """A real LIDC slice cut short, the only file of its cohort: exit 2, one line, the path exactly once."""
    folder = tmp_path / "cohort"
    folder.mkdir()
    source = sorted(lidc_dir.glob("*.dcm"))[40].read_bytes()
    cut = folder / "IM30.dcm"
    cut.write_bytes(source[: len(source) - 10_000])  # the header whole, the pixels cut short
    for args in (
        ["export", str(cut), "--stored", "-o", str(tmp_path / "v.nii")],
        ["summarize", str(folder), "-o", str(tmp_path / "out"), "-q"],
    ):
        result = ctframe_cmd(*args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ctframe: error: "), result.stderr
        assert "internal error" not in lines[0]
        if args[0] == "export":
            message = lines[0]
        else:  # the stack's failure is in problems.csv; the line points there
            assert "problems.csv" in lines[0]
            message = " ".join(pd.read_csv(tmp_path / "out" / "problems.csv")["reason"])
        assert message.count(str(cut)) == 1, message  # not wrapped a second time
        assert "DicomReadError" not in message and "cannot read pixel data (" not in message, message


# --------------------------------------------------------------------------- a light start

HEAVY = ("xarray", "dask", "distributed", "pydicom", "numpy", "pandas", "scipy", "skimage", "numba", "matplotlib")


def _heavy_modules_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout.strip().splitlines()[-1])  # a list of module names


@pytest.mark.parametrize(
    "code",
    [
        "import ctframe.cli",
        "from ctframe.cli import run\ntry:\n    run(['--help'])\nexcept SystemExit:\n    pass",
        "from ctframe.cli import run\ntry:\n    run(['scan', '--help'])\nexcept SystemExit:\n    pass",
        "import ctframe\nctframe.__version__\nctframe.CTFrameError\nctframe.load_config",
    ],
    ids=["import-cli", "help", "scan-help", "version-errors-config"],
)
def test_cli__help_and_version_import_no_heavy_library(code: str) -> None:
    assert _heavy_modules_after(code) == []


def test_cli__console_script_help_lists_the_commands() -> None:
    result = ctframe_cmd("--help")
    assert result.returncode == 0, result.stderr
    for command in ("scan", "summarize", "demo", "export", "show-config"):
        assert command in result.stdout


def test_init__every_public_name_resolves_lazily() -> None:
    code = (
        "import ctframe\n"
        "names = [n for n in ctframe.__all__ if n != '__version__']\n"
        "import ctframe.io, ctframe.scan\n"  # importing the submodule keeps ctframe.scan the function
        "assert ctframe.scan.__module__ == 'ctframe.scan' and callable(ctframe.scan), ctframe.scan\n"
        "missing = [n for n in names if getattr(ctframe, n, None) is None]\n"
        "assert not missing, missing\n"
        "assert set(names) <= set(dir(ctframe))\n"
        "ns = {}\n"
        "exec('from ctframe import *', ns)\n"
        "assert set(names) <= set(ns) and callable(ns['scan']), sorted(set(names) - set(ns))\n"
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_init__all_lists_exactly_the_lazy_names() -> None:
    import ctframe

    assert sorted(ctframe.__all__) == sorted([*ctframe._SOURCES, "__version__"])
    assert len(ctframe.__all__) == len(set(ctframe.__all__))


def test_init__unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        ctframe.no_such_thing  # noqa: B018


def test_init__ct_accessor_on_a_volume_and_after_import_accessor(lidc_dir: Path) -> None:
    """`import ctframe` then open_series gives `.ct`; a plain DataArray has it after `import ctframe.accessor`."""
    code = textwrap.dedent(
        f"""
        import ctframe
        volume = ctframe.open_series({str(lidc_dir)!r})
        hu = volume.ct.to_hu()
        print(type(volume.ct).__name__, hu.dims)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "CTAccessor"
    code = textwrap.dedent(
        """
        import xarray as xr, numpy as np
        plain = xr.DataArray(np.zeros((2, 3, 3), "int16"), dims=("slice", "row", "col"))
        print(hasattr(plain, "ct"))
        import ctframe.accessor
        print(hasattr(plain, "ct"), type(plain.ct).__name__)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "CTAccessor"]


# --------------------------------------------------------------------------- keys a person can type


def _files_by_series(root: Path) -> dict[str, list[Path]]:
    """SeriesInstanceUID -> files, read with pydicom (the reference, independent of ctframe's scan)."""
    import pydicom

    found: dict[str, list[Path]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM: part of no series
            continue
        if "PixelData" in ds or hasattr(ds, "Rows"):
            found.setdefault(str(ds.SeriesInstanceUID), []).append(path)
    return found


def _printed_keys(stdout: str) -> list[str]:
    return [line.split()[0] for line in stdout.splitlines() if line.startswith("2.25.")]  # keys flush left


def test_scan__prints_whole_keys_that_export_accepts_by_unique_prefix(shared_data: Path, tmp_path: Path) -> None:
    import xarray as xr

    from ctframe.privacy import pseudonymous_uid

    root = shared_data / "dcm_qa_ct"
    reference = _files_by_series(root)
    assert len(reference) == 2
    result = runner.invoke(app, ["scan", str(root)])
    assert result.exit_code == 0, result.output
    keys = _printed_keys(result.stdout)
    # the whole pseudonymous key of each series, as the privacy module derives it from the original UID
    assert sorted(keys) == sorted(pseudonymous_uid(uid) for uid in reference), result.stdout
    for uid, files in reference.items():
        key = pseudonymous_uid(uid)
        others = [k for k in keys if k != key]
        n = next(n for n in range(6, len(key) + 1) if not any(k.startswith(key[:n]) for k in others))
        out = tmp_path / f"{key[:n]}.nc"  # NetCDF: the tilted series is no NIfTI grid
        exported = runner.invoke(app, ["export", str(root), "--series", key[:n], "-o", str(out), "-q"])
        assert exported.exit_code == 0, exported.output
        with xr.open_dataset(out) as ds:
            assert ds.sizes["slice"] == len(files)  # the series that prefix names, every slice
    ambiguous = runner.invoke(app, ["export", str(root), "--series", "2.25.", "-o", str(tmp_path / "a.nc")])
    assert ambiguous.exit_code == 2
    lines = _error_lines(ambiguous.output)
    assert len(lines) == 1 and all(k in lines[0] for k in keys), ambiguous.output
    assert "give more of the key" in lines[0] and not (tmp_path / "a.nc").exists()


def test_scan__series_table_has_each_stacks_folder_relative_to_the_root(shared_data: Path, tmp_path: Path) -> None:
    from ctframe.privacy import pseudonymous_uid

    for root, prefix in ((shared_data / "dcm_qa_ct", ""), (shared_data, "dcm_qa_ct/")):
        out = tmp_path / "series.csv"
        result = runner.invoke(app, ["scan", str(root), "-o", str(out), "-q", "--overwrite"])
        assert result.exit_code == 0, result.output
        table = pd.read_csv(out).set_index("stack_key")
        for uid, files in _files_by_series(shared_data / "dcm_qa_ct").items():
            (folder,) = {f.parent.relative_to(shared_data / "dcm_qa_ct") for f in files}
            assert table.loc[pseudonymous_uid(uid), "folder"] == f"{prefix}{folder}"
    lidc = runner.invoke(app, ["scan", str(shared_data / "lidc-idri-0001"), "-o", str(out), "-q", "--overwrite"])
    assert lidc.exit_code == 0 and pd.read_csv(out)["folder"].tolist() == ["."]


def test_scan__problems_option_writes_every_skipped_file_with_its_reason(edge_cases: Path, tmp_path: Path) -> None:
    import os

    out, problems = tmp_path / "series.parquet", tmp_path / "problems.csv"
    result = runner.invoke(app, ["scan", str(edge_cases), "-o", str(out), "--problems", str(problems), "-q"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(problems)
    assert list(table.columns) == ["path", "reason"] and table["reason"].str.len().gt(0).all()
    with pytest.warns(ctframe.ScanWarning):
        catalog = ctframe.scan(edge_cases, progress=False)
    every_file = {os.path.join(d, f) for d, _, names in os.walk(edge_cases) for f in names}
    # each file is either in the catalog or a problem row, never both, never neither
    assert set(table["path"]) | set(catalog["path"]) == every_file
    assert not set(table["path"]) & set(catalog["path"])
    assert table["reason"].str.contains("truncated|not a DICOM", regex=True).any()


def test_summarize__nothing_selectable_is_said_in_cli_terms(edge_cases: Path, tmp_path: Path) -> None:
    """A real MR image only: found, but no stack passes the CT selection rule."""
    root = tmp_path / "mr"
    root.mkdir()
    (root / "mr.dcm").write_bytes((edge_cases / "pydicom-3.0.2" / "MR_small_implicit.dcm").read_bytes())
    result = runner.invoke(app, ["summarize", str(root), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output)
    assert line.startswith(f"ctframe: error: none of the 1 stack(s) under {root} passes the series-selection rule")
    assert "--config" in line and "ctframe." not in line and "(...)" not in line
    assert not (tmp_path / "o").exists()


def test_scan__no_dicom_is_one_wording_for_scan_and_summarize(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not dicom")
    root = tmp_path / "empty"
    scan_line = _error_lines(runner.invoke(app, ["scan", str(root)]).output)
    summarize_line = _error_lines(runner.invoke(app, ["summarize", str(root), "-o", str(tmp_path / "o")]).output)
    assert scan_line == summarize_line, (scan_line, summarize_line)
    (line,) = scan_line
    assert "--problems" in line and "1 file(s) skipped" in line
    assert "ctframe." not in line and "(...)" not in line  # no Python call in a CLI message
    with pytest.raises(ctframe.NoSeriesError) as info:
        ctframe.open_series(root)
    # the library's message fits either side: it gives the reason itself, naming no option and no call
    assert "1 file(s) skipped; notes.txt: not a DICOM file" in str(info.value) and "--" not in str(info.value)


# --------------------------------------------------------------------------- options checked before any work


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["summarize", "{root}", "-o", "{out}", "--workers", "0"], r"--workers must be .* 1 or more, got 0$"),
        (["summarize", "{root}", "-o", "{out}", "--workers", "-1"], r"--workers must be .* 1 or more, got -1$"),
        (["summarize", "{root}", "-o", "{out}", "--scheduler", "localhost"], r"--scheduler takes .*'localhost'$"),
        (["summarize", "{root}", "-o", "{out}", "--scheduler", "tcp://127.0.0.1:{port}"],
         r"--scheduler tcp://127.0.0.1:\d+: no dask scheduler answers there \(.+\); .*leave out --scheduler"),
        (["scan", "{root}", "-o", "{out}.txt"], r"--output .*: the series table is written as .csv or .parquet"),
        (["scan", "{root}", "--problems", "{out}.json"], r"--problems .*: the problems table is written as .csv"),
        (["scan", "{root}", "-o", "{out}.csv", "--problems", "{out}.csv"], r"name the same file"),
    ],
)  # fmt: skip
def test_cli__options_are_checked_before_any_work(
    lidc_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    import socket

    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def no_work(*args, **kwargs):
        raise AssertionError("the scan started before the options were checked")

    monkeypatch.setattr(ctframe, "scan", no_work)
    out = tmp_path / "out"
    result = runner.invoke(app, [a.format(root=lidc_dir, out=out, port=port) for a in args])
    assert result.exit_code == 2, result.output
    lines = _error_lines(result.output)
    assert len(lines) == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert re.search(message, lines[0]), lines[0]
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["summarize", ".", "-o", "o", "--workers", "two"], r"Invalid value for '--workers'.*\(see `ctframe summarize"),
        (["demo", "--patients", "0"], r"Invalid value for '--patients'.*greater than or equal to 1"),
        (
            ["scan", ".", "--no-such-option"],
            r"No such option: --no-such-option( \(Possible options: [^)]*\))? \(see `ctframe scan --help`\)",
        ),
    ],
)
def test_cli__usage_errors_are_one_line_with_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = ctframe_cmd(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- progress


def test_summarize__progress_off_a_terminal_is_lines_per_stage(
    cohort_root: Path, scan_only_config: Path, tmp_path: Path
) -> None:
    result = ctframe_cmd("summarize", str(cohort_root), "-o", str(tmp_path / "o"), "-c", str(scan_only_config))
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "\x1b" not in result.stderr  # no bar redrawn in a log
    n_files = len(list(cohort_root.rglob("*.dcm")))
    assert re.search(rf"^scanned .*: {n_files} DICOM file\(s\), 4 stack\(s\), 0 file\(s\) skipped, [\d.]+ s$",
                     result.stderr, re.M), result.stderr  # fmt: skip
    assert re.search(r"^computing: done, \d+ tasks in [\d.]+ s$", result.stderr, re.M), result.stderr
    assert re.search(r"^wrote .* in [\d.]+ s$", result.stderr, re.M), result.stderr


def test_summarize__per_stack_warnings_are_one_cli_line_pointing_to_problems_csv(
    shared_data: Path, tmp_path: Path
) -> None:
    """20 single-slice CT studies: none can be segmented; the CLI says so once, in its own words."""
    outdir = tmp_path / "o"
    result = ctframe_cmd("summarize", str(shared_data / "covid19-ny-sbu-slices"), "-o", str(outdir))
    assert result.returncode == 0, result.stderr
    problems = pd.read_csv(outdir / "problems.csv")
    n_stacks = int((problems["stage"] == "compute").sum())
    assert n_stacks == 20  # one per study: single slices, never enough for lungs
    warned = [line for line in result.stderr.splitlines() if line.startswith("ctframe: warning:")]
    assert warned == [
        f"ctframe: warning: {n_stacks} stack(s) skipped or measured as the whole scan only (no lungs or body); "
        f"each one and why is in {outdir / 'problems.csv'}"
    ], result.stderr
    assert "ctframe.segment" not in result.stderr and "(...)" not in result.stderr


def test_summarize__scheduler_address_prints_its_dashboard_and_gives_the_same_tables(
    cohort_root: Path, scan_only_config: Path, tmp_path: Path
) -> None:
    from distributed import LocalCluster

    local = tmp_path / "threads"
    result = runner.invoke(app, ["summarize", str(cohort_root), "-o", str(local), "-c", str(scan_only_config), "-q"])
    assert result.exit_code == 0, result.output
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster:
        outdir = tmp_path / "remote"
        args = ["summarize", str(cohort_root), "-o", str(outdir), "-c", str(scan_only_config)]
        result = runner.invoke(app, [*args, "--scheduler", cluster.scheduler_address])
    assert result.exit_code == 0, result.output
    line = f"connected to the dask scheduler at {cluster.scheduler_address}; dashboard http://"
    assert any(s.startswith(line) for s in result.stderr.splitlines()), result.stderr
    assert re.search(r"^computing: done, \d+ tasks in [\d.]+ s$", result.stderr, re.M), result.stderr
    regions = [pd.read_parquet(folder / "regions.parquet") for folder in (local, outdir)]
    pd.testing.assert_frame_equal(*regions)


def test_storage_options__values_convert_nest_and_quoted_text_stays_text() -> None:
    from ctframe.cli import _storage_options

    given = ["anon=true", "client_kwargs.endpoint_url=http://127.0.0.1:9000", "client_kwargs.region_name=eu",
             "block_size=8192", "timeout=1.5", "secret='12345'", 'key="null"', "token=nan", "profile=NULL"]  # fmt: skip
    assert _storage_options(given) == {
        "anon": True,
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu"},
        "block_size": 8192,
        "timeout": 1.5,
        "secret": "12345",
        "key": "null",
        "token": "nan",
        "profile": None,
    }
    assert _storage_options(None) is None


@pytest.mark.parametrize(
    ("pairs", "message"),
    [(["anon"], "'anon': write it as KEY=VALUE"), (["=x"], "write it as KEY=VALUE"),
     (["a=1", "a.b=2"], "a is given both as a value and as a group")],
)  # fmt: skip
def test_storage_options__malformed_pairs_are_parameter_errors(pairs, message) -> None:
    from ctframe.cli import _storage_options

    with pytest.raises(ctframe.ParameterError, match=message):
        _storage_options(pairs)
