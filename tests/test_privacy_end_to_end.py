"""Patient data end to end: planted identifying values never leave a default run.

Distinctive values are planted in phantom headers (patient name, birth date,
PatientID, accession number, institution, referring physician); patient 2's are
also invalid for their VR, so that pydicom's validation messages would carry
them if anything read them. Every table, attr, warning, log record, printed
line, error message and every byte of every file a default run writes is
searched; ``include_phi=True`` / ``--include-phi`` must be the only way to keep
them. Tag values never become paths: PatientIDs such as ``../../etc`` cannot
write outside OUTDIR.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pydicom
import pytest
import xarray as xr
from typer.testing import CliRunner

import ctframe
from ctframe.cli import app
from ctframe.cohort import open_cohort, summarize
from ctframe.errors import CTFrameError
from ctframe.scan import PHI_COLUMNS
from ctframe.testing import write_phantom_series

runner = CliRunner()
SHAPE, SPACING = (8, 32, 32), (10.0, 10.0, 10.0)
PATIENTS = [
    {  # valid values
        "patient_id": "ZQXJ-PID-7731",
        "patient_name": "Qwyzzle^Brunhilde",
        "birth_date": "19130917",
        "accession_number": "ACCZQX90817",
        "institution_name": "Saint Zorblax Infirmary",
        "referring_physician": "Dr^Vexmortian",
    },
    {  # invalid for their VRs: pydicom's validation messages would quote them
        "patient_id": "KWOPPLE-ID-" + "9" * 60,
        "patient_name": "Frabjulon^Ysolde^" + "M" * 60,
        "birth_date": "1921-04-30",
        "accession_number": "ACC-GRONKEL-55555",
        "institution_name": "Clinique Ombrevaux " + "z" * 60,
        "referring_physician": "Dr^Plinkwhistle",
    },
]
#: What must never appear (matched case-insensitively; names also as parts).
FORBIDDEN = sorted(
    {
        *(v for p in PATIENTS for v in p.values()),
        "ZQXJ", "Qwyz", "Brunhilde", "ACCZQX", "Zorblax", "Vexmortian", "1913-09-17",
        "KWOPPLE", "Frabjulon", "Ysolde", "GRONKEL", "Ombrevaux", "Plinkwhistle", "19210430",
    }
)  # fmt: skip


def _leaks(text: str) -> list[str]:
    low = text.lower()
    return [v for v in FORBIDDEN if v.lower() in low]


def _write_cohort(root: Path, patients: list[dict[str, str]]) -> list[Path]:
    """Two time points per patient; pydicom may write the invalid values only when told to."""
    settings = pydicom.config.settings
    previous = settings.writing_validation_mode
    settings.writing_validation_mode = pydicom.config.IGNORE
    folders = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pydicom's complaints while writing
            for p, values in enumerate(patients):
                for tp in range(2):
                    folder = root / f"patient-{p + 1}" / f"study-{tp + 1}"
                    write_phantom_series(
                        folder, shape=SHAPE, spacing_mm=SPACING, time_point=tp, seed=10 * p + tp,
                        study_date=f"2021{tp + 3:02d}0{p + 1}", return_arrays=False, **values,
                    )  # fmt: skip
                    folders.append(folder)
    finally:
        settings.writing_validation_mode = previous
    return folders


@pytest.fixture(scope="module")
def cohort_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phi-cohort")
    folders = _write_cohort(root, PATIENTS)
    # a third study of patient 1 whose pixels are cut short: it fails at compute time and is reported
    broken = root / "patient-1" / "study-3"
    write_phantom_series(
        broken, shape=SHAPE, spacing_mm=SPACING, time_point=1, seed=99, study_date="20210601",
        return_arrays=False, **PATIENTS[0],
    )  # fmt: skip
    victim = sorted(broken.glob("*.dcm"))[3]
    victim.write_bytes(victim.read_bytes()[:-40])
    # a file cut inside its PatientName element, and one that is not DICOM
    data = (folders[0] / sorted(os.listdir(folders[0]))[0]).read_bytes()
    (root / "patient-1" / "cut-in-name.dcm").write_bytes(data[: data.index(b"Qwyzzle") + 4])
    (root / "notes.txt").write_text("Qwyzzle^Brunhilde born 19130917 (not DICOM)")
    return root


def _strings_of(obj: Any) -> str:
    """Everything an object shows: DataFrame cells, columns, attrs; DataArray attrs, coords, name."""
    if isinstance(obj, pd.DataFrame):
        return "\n".join([obj.astype(str).to_csv(), " ".join(map(str, obj.columns)), repr(obj.attrs)])
    if isinstance(obj, xr.DataArray):
        coords = " ".join(f"{k} {v.attrs} {np.asarray(v.values)[:3]}" for k, v in obj.coords.items())
        return f"{obj.name} {obj.attrs} {coords}"
    return str(obj)


def _assert_clean(where: str, *objects: Any) -> None:
    for obj in objects:
        leaks = _leaks(_strings_of(obj))
        assert not leaks, f"{where}: {leaks} in {type(obj).__name__}"


def _files_leaking(folder: Path) -> dict[str, list[str]]:
    """Search every byte of every file under `folder`, parquet also decoded as tables."""
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        text = path.read_bytes().decode("latin-1")
        if path.suffix == ".parquet":
            text += _strings_of(pd.read_parquet(path)) + str(pq.read_schema(path).metadata)
        leaks = _leaks(text)
        if leaks:
            found[str(path.relative_to(folder))] = leaks
    return found


# --------------------------------------------------------------------------- the API


def test_privacy__api_default_run_keeps_no_identifying_value(cohort_root: Path, caplog, capfd) -> None:
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        catalog = ctframe.scan(cohort_root)
        problems = ctframe.problems_table(catalog)
        table = ctframe.series_table(catalog)
        assert not set(PHI_COLUMNS) & set(catalog.columns) and not set(PHI_COLUMNS) & set(table.columns)
        _assert_clean("scan", catalog, problems, table)
        assert len(problems) == 2  # the file cut in its name, the notes

        one = table[table["patient_key"] == catalog["patient_key"].iloc[0]]["stack_key"].iloc[0]
        volume = ctframe.open_series(cohort_root, series=one)
        hu = ctframe.to_hu(volume)
        _assert_clean("open_series", volume, hu)

        errors = []
        for call in (
            lambda: ctframe.open_series(cohort_root),  # several series: the message lists them
            lambda: ctframe.to_hu(volume.assign_attrs(modality="MR")),
            lambda: ctframe.open_series(cohort_root / "patient-1" / "study-3").compute(),
            lambda: ctframe.open_series(cohort_root / "patient-1" / "cut-in-name.dcm"),
        ):
            with pytest.raises(CTFrameError) as info:
                call()
            errors.append(str(info.value))
        _assert_clean("error messages", *errors)

        cohort = open_cohort(cohort_root)
        node_attrs = [n.attrs for n in cohort.tree.subtree] + [
            v.attrs for n in cohort.tree.subtree for v in n.data_vars.values()
        ]
        paths = [n.path for n in cohort.tree.subtree]
        _assert_clean("open_cohort", cohort.catalog, cohort.series, *cohort.volumes.values(), node_attrs, paths)
        summary = summarize(cohort, progress=False)
    failed = summary.problems["reason"].str.contains("pixel data truncated")
    assert failed.sum() == 1  # the cut study; the others are too short for lungs (whole-scan region only)
    assert summary.problems.loc[~failed, "reason"].str.startswith("no body or lung regions").all()
    _assert_clean(
        "summarize", summary.histograms, summary.regions, summary.slice_areas, summary.longitudinal,
        summary.series, summary.problems,
    )  # fmt: skip
    messages = [f"{w.category.__name__}: {w.message}" for w in caught]
    assert any("CohortWarning" in m for m in messages)  # the broken stack was announced...
    _assert_clean("warnings", *messages)  # ...without naming anyone
    _assert_clean("log records", *[r.getMessage() for r in caplog.records])
    out, err = capfd.readouterr()
    _assert_clean("stdout/stderr", out, err)


def test_privacy__include_phi_is_the_only_way_to_keep_them(cohort_root: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctframe.CTFrameWarning)
        catalog = ctframe.scan(cohort_root, include_phi=True)
        table = ctframe.series_table(catalog)
        key = catalog["stack_key"].iloc[0]
        volume = ctframe.open_series(catalog[catalog["stack_key"] == key], include_phi=True)
        full = ctframe.open_series(cohort_root, series=key, include_phi=True)
    for column in PHI_COLUMNS:
        assert column in catalog and column in table
    first = PATIENTS[0]
    assert set(catalog["patient_id"]) == {p["patient_id"] for p in PATIENTS}
    assert first["patient_name"] in set(table["patient_name"])
    assert first["birth_date"] in set(table["patient_birth_date"])
    assert first["accession_number"] in set(table["accession_number"])
    assert first["institution_name"] in set(table["institution_name"])
    assert first["referring_physician"] in set(table["referring_physician_name"])
    assert _leaks(str(volume.attrs)) and _leaks(str(full.attrs))


# --------------------------------------------------------------------------- the CLI


def test_privacy__cli_summarize_default_run_writes_no_identifying_value(cohort_root: Path, tmp_path: Path) -> None:
    outdir = tmp_path / "summary"
    result = runner.invoke(app, ["summarize", str(cohort_root), "-o", str(outdir)])
    assert result.exit_code == 0, result.output
    assert "ctframe: warning:" in result.output  # the broken stack was reported...
    assert not _leaks(result.output), _leaks(result.output)  # ...anonymously
    written = sorted(p.relative_to(outdir).as_posix() for p in outdir.rglob("*") if p.is_file())
    assert {"series.parquet", "regions.parquet", "histograms.parquet", "problems.csv", "provenance.json"} <= set(
        written
    )
    assert any(name.startswith("figures/") for name in written) and "report.html" in written
    assert not _files_leaking(outdir), _files_leaking(outdir)
    assert not _leaks(" ".join(written))
    problems = pd.read_csv(outdir / "problems.csv")
    assert problems["reason"].str.contains("pixel data truncated").any()


def test_privacy__cli_include_phi_keeps_them_in_the_series_table(cohort_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "scan-only.yaml"
    config.write_text("cohort:\n  regions: [scan]\n")
    outdir = tmp_path / "summary"
    result = runner.invoke(app, ["summarize", str(cohort_root), "-o", str(outdir), "-c", str(config), "--include-phi"])
    assert result.exit_code == 0, result.output
    leaking = _files_leaking(outdir)
    assert set(leaking) >= {"series.parquet", "series.csv"}
    series = pd.read_parquet(outdir / "series.parquet")
    assert set(series["patient_id"]) == {p["patient_id"] for p in PATIENTS}
    assert not _leaks(result.output)  # the terminal still shows no identifying value
    assert not _leaks(" ".join(p.name for p in outdir.rglob("*")))  # nor do file names


def test_privacy__cli_scan_and_export_outputs_are_clean(cohort_root: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["scan", str(cohort_root), "-o", str(tmp_path / "series.parquet")])
    assert result.exit_code == 0, result.output
    assert not _leaks(result.output)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctframe.CTFrameWarning)
        key = ctframe.series_table(ctframe.scan(cohort_root))["stack_key"].iloc[0]
    for fmt, name in (("netcdf", "v.nc"), ("zarr", "v.zarr"), ("nifti", "v.nii")):
        args = ["export", str(cohort_root), "--series", key, "-f", fmt, "-o", str(tmp_path / name)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert not _leaks(result.output)
    assert not _files_leaking(tmp_path), _files_leaking(tmp_path)


# --------------------------------------------------------------------------- tag values never become paths

HOSTILE_IDS = ["../../etc", "../../../../tmp/ctframe-escape", "a/b/../../c", "/abs/olute", "..", "x\\..\\..\\y"]


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_privacy__hostile_patient_ids_cannot_write_outside_outdir(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    for i, pid in enumerate(HOSTILE_IDS):
        write_phantom_series(
            inputs / f"p{i}", shape=SHAPE, spacing_mm=SPACING, seed=i, patient_id=pid, return_arrays=False
        )
    work = tmp_path / "work"
    (work / "deep" / "er").mkdir(parents=True)
    outdir = work / "deep" / "er" / "summary"
    before = _tree(tmp_path)
    parent_before = set(os.listdir(tmp_path.parent))
    result = runner.invoke(app, ["summarize", str(inputs), "-o", str(outdir)])
    assert result.exit_code == 0, result.output
    created = _tree(tmp_path) - before
    outside = sorted(p for p in created if not p.startswith("work/deep/er/summary"))
    assert not outside, outside
    assert set(os.listdir(tmp_path.parent)) == parent_before  # nothing beside the test folder either
    assert not Path("/tmp/ctframe-escape").exists()
    names = [Path(p).name for p in created]
    for pid in HOSTILE_IDS:
        parts = [s for s in re.split(r"[/\\]", pid) if s not in ("", ".", "..")]
        assert not any(part in name for part in parts for name in names if len(part) > 2), (pid, names)
    figures = sorted((outdir / "figures").glob("*.png"))
    assert figures and all(re.fullmatch(r"[A-Za-z0-9_.-]+\.png", f.name) for f in figures)
