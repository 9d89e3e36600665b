"""Patient data end to end: planted identifying values never leave a default run.

Distinctive values are planted in phantom headers (patient name, birth date,
PatientID, accession number, institution, referring physician); patient 2's are
also invalid for their VR, so that pydicom's validation messages would carry
them if anything read them. Every table, attr, warning, log record, printed
line, error message and every byte of every file a default run writes is
searched; ``include_phi=True`` / ``--keep-identifiers`` must be the only way to
keep them, and then only in the linkage table. Tag values never become paths:
PatientIDs such as ``../../etc`` cannot write outside OUTDIR.

On real files (LIDC-IDRI-0001 slices, a COVID-19-NY-SBU prior/current pair),
every instance UID and every date is planted; a default ``ctframe summarize``
must write none of them (nor the salt) anywhere, ``--keep-identifiers`` only into
``linkage.csv``; the same salt gives the same pseudonyms, another salt others,
and intervals between a patient's scans survive the date shift exactly.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
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
from ctframe.cohort import longitudinal_table, open_cohort, summarize
from ctframe.errors import CTFrameError
from ctframe.privacy import patient_key, pseudonymous_uid
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


_BASE64_IMAGE = re.compile(r"data:image/[a-z+]+;base64,([A-Za-z0-9+/=]+)")


def _files_leaking(folder: Path) -> dict[str, list[str]]:
    """Search every byte of every file under `folder`, parquet also decoded as tables."""
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        text = path.read_bytes().decode("latin-1")
        if path.suffix == ".html":  # embedded images: search their bytes, not their base64 text (random matches)
            text = _BASE64_IMAGE.sub(lambda m: base64.b64decode(m.group(1)).decode("latin-1"), text)
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
        assert column in catalog and column not in table  # the series table never carries them
    _assert_clean("series_table of an include_phi catalog", table)
    first = PATIENTS[0]
    assert set(catalog["patient_id"]) == {p["patient_id"] for p in PATIENTS}
    linkage = ctframe.linkage_table(catalog)  # the one table that holds them
    assert set(linkage["stack_key"]) == set(table["stack_key"])
    assert first["patient_name"] in set(linkage["patient_name"])
    assert first["birth_date"] in set(linkage["patient_birth_date"])
    assert first["accession_number"] in set(linkage["accession_number"])
    assert first["institution_name"] in set(linkage["institution_name"])
    assert first["referring_physician"] in set(linkage["referring_physician_name"])
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


def test_privacy__cli_include_phi_keeps_them_only_in_the_linkage_table(cohort_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "scan-only.yaml"
    config.write_text("cohort:\n  regions: [scan]\n")
    outdir = tmp_path / "summary"
    result = runner.invoke(app, ["summarize", str(cohort_root), "-o", str(outdir), "-c", str(config), "--include-phi"])
    assert result.exit_code == 0, result.output
    leaking = _files_leaking(outdir)
    assert set(leaking) == {"linkage.csv"}, leaking  # --include-phi: the old name of --keep-identifiers
    linkage = pd.read_csv(outdir / "linkage.csv", dtype=str)
    assert set(linkage["patient_id"]) == {p["patient_id"] for p in PATIENTS}
    assert not _leaks(result.output)  # the terminal still shows no identifying value
    assert not _leaks(" ".join(p.name for p in outdir.rglob("*")))  # nor do file names


def test_privacy__cli_scan_and_export_outputs_are_clean(cohort_root: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["scan", str(cohort_root), "-o", str(tmp_path / "series.parquet")])
    assert result.exit_code == 0, result.output
    assert not _leaks(result.output)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctframe.CTFrameWarning)
        catalog = ctframe.scan(cohort_root)
    key = catalog[catalog["path"].str.contains("study-1")]["stack_key"].iloc[0]  # not the broken study-3
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


# --------------------------------------------------------------------------- real files: planted UIDs and dates

#: Every instance UID planted below starts with this root (no real UID does), so a search for it finds any of them.
PLANTED_ROOT = "1.2.826.0.1.3680043.9.4242"
#: (patient, source, study dates): all within 365 days, so no date moved back by 365 days or more can equal one.
PLANTED = [
    ("PLANT-A-0001", "lidc", ("20231015", "20240115")),
    ("PLANT-B-0002", "covid", ("20240227", "20240301")),  # across 29 February
]
PLANTED_DATES = [d for _, _, dates in PLANTED for d in dates]
SALT_A, SALT_B = "planted-test-salt-Alpha-93", "planted-test-salt-Bravo-17"


def _spellings(date: str) -> list[str]:
    y, m, d = date[:4], date[4:6], date[6:]
    return [date, f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{d}.{m}.{y}"]


#: What must never appear in a shared output: the planted UIDs (by their root), PatientIDs and dates.
PLANTED_FORBIDDEN = [PLANTED_ROOT, *(p for p, _, _ in PLANTED), *(s for d in PLANTED_DATES for s in _spellings(d))]


def _planted_leaks(text: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [v for v in (*PLANTED_FORBIDDEN, *extra) if v.lower() in text.lower()]


def _plant(ds: pydicom.Dataset, p: int, s: int, k: int, patient: str, date: str) -> None:
    """Give every instance UID a planted value and every date the planted date."""
    roles = {"StudyInstanceUID": 1, "SeriesInstanceUID": 2, "SOPInstanceUID": 3, "FrameOfReferenceUID": 4}
    ds.PatientID = patient
    for elem in ds.iterall():
        if elem.VR == "UI" and elem.value and "Class" not in elem.keyword and elem.keyword != "TransferSyntaxUID":
            role = roles.get(elem.keyword, 9)
            per_file = role in (3, 9)
            elem.value = f"{PLANTED_ROOT}.{p}{s}.{role}" + (f".{k + 1}" if per_file else "")
            if (p, s, role) == (2, 2, 3):  # 93 characters: invalid for UI, so pydicom's messages would quote it
                elem.value += "." + "9" * 60
        elif elem.VR == "DA" and elem.value:
            elem.value = date
        elif elem.VR == "DT" and elem.value:
            elem.value = date + "101500"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


@pytest.fixture(scope="module")
def planted_root(tmp_path_factory: pytest.TempPathFactory, lidc_dir: Path, shared_data: Path) -> Path:
    """Real CT files (8 LIDC slices twice; a covid19-ny-sbu prior/current pair) with planted UIDs and dates.

    Folder and file names are neutral: ctframe writes paths (relative to ROOT) as they are.
    """
    root = tmp_path_factory.mktemp("planted")
    covid = sorted((shared_data / "covid19-ny-sbu-slices" / "A002304" / "axial").glob("*.dcm"))
    for p, (patient, source, dates) in enumerate(PLANTED, start=1):
        for s, date in enumerate(dates, start=1):
            files = sorted(lidc_dir.glob("*.dcm"))[60:68] if source == "lidc" else [covid[s - 1]]
            folder = root / f"patient{p}" / f"study{s}"
            folder.mkdir(parents=True)
            for k, path in enumerate(files):
                ds = pydicom.dcmread(path)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # pydicom on the invalid UID
                    _plant(ds, p, s, k, patient, date)
                    ds.save_as(folder / f"slice{k:03d}.dcm", enforce_file_format=True)
    # the planted values really are in the files (a search that cannot fail proves nothing)
    raw = b"".join(f.read_bytes() for f in root.rglob("*.dcm")).decode("latin-1")
    assert all(v in raw for v in [PLANTED_ROOT, *PLANTED_DATES, "9" * 60]), "planting failed"
    return root


def _all_text(folder: Path) -> dict[str, str]:
    """Every output file as text: raw bytes, plus Parquet decoded (every value as a string, schema metadata)."""
    texts = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        text = path.read_bytes().decode("latin-1")
        if path.suffix == ".html":  # embedded images: search their bytes, not their base64 text (random matches)
            text = _BASE64_IMAGE.sub(lambda m: base64.b64decode(m.group(1)).decode("latin-1"), text)
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            frame = table.to_pandas()
            text += "\n" + frame.astype(str).to_csv() + str(table.schema) + str(table.schema.metadata)
        texts[path.relative_to(folder).as_posix()] = text
    return texts


def _summarize(root: Path, outdir: Path, *args: str, env: dict[str, str]) -> str:
    result = runner.invoke(app, ["summarize", str(root), "-o", str(outdir), *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output + (result.stderr or "")


def test_privacy__planted_uids_and_dates_never_leave_a_default_run(
    planted_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Default salt (random, kept in CTFRAME_SALT_FILE): no planted UID, date or the salt in any byte written."""
    caplog.set_level(logging.DEBUG)
    salt_file = tmp_path / "salt"
    env = {"CTFRAME_SALT": "", "CTFRAME_SALT_FILE": str(salt_file)}
    outdir = tmp_path / "summary"
    printed = _summarize(planted_root, outdir, env=env)
    salt = salt_file.read_text().strip()
    assert len(salt) == 64  # the random salt was made, and kept outside the outputs
    texts = _all_text(outdir)
    assert {"series.parquet", "regions.parquet", "longitudinal.parquet", "provenance.json", "report.html"} <= set(
        texts
    ) and any(name.startswith("figures/") for name in texts)
    assert "linkage.csv" not in texts
    leaking = {name: found for name, text in texts.items() if (found := _planted_leaks(text, (salt,)))}
    assert not leaking, leaking
    assert not _planted_leaks(printed, (salt,)), printed
    assert not _planted_leaks(" ".join(r.getMessage() for r in caplog.records), (salt,))
    assert not _planted_leaks(" ".join(texts))  # file names

    # not vacuous: the tables do hold UIDs and dates, as pseudonyms
    series = pd.read_parquet(outdir / "series.parquet")
    assert len(series) == 4 and series["series_uid"].str.match(r"^2\.25\.\d+$").all()
    assert series["study_uid"].str.match(r"^2\.25\.\d+$").all() and series["study_date"].str.match(r"^\d{8}$").all()
    assert (series["stack_key"] == series["series_uid"]).all()
    provenance = json.loads((outdir / "provenance.json").read_text())
    assert "random" in provenance["deidentification"]["salt"]
    assert provenance["config"]["pseudonym"]["salt"] == "(not recorded)"


def test_privacy__keep_identifiers_writes_them_only_to_the_linkage_table(planted_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "scan-only.yaml"
    config.write_text(f"cohort:\n  regions: [scan]\npseudonym:\n  salt: {SALT_A}\n")
    outdir = tmp_path / "summary"
    printed = _summarize(planted_root, outdir, "-c", str(config), "--keep-identifiers", env={"CTFRAME_SALT": ""})
    texts = _all_text(outdir)
    leaking = {name: found for name, text in texts.items() if (found := _planted_leaks(text, (SALT_A,)))}
    assert set(leaking) == {"linkage.csv"}, leaking
    assert SALT_A not in leaking["linkage.csv"]  # the salt is in no output, the linkage table included
    assert not _planted_leaks(printed, (SALT_A,))
    assert "linkage.csv holds the original identifiers: keep it apart" in printed
    provenance = json.loads(texts["provenance.json"])
    assert "configuration" in provenance["deidentification"]["salt"]
    assert provenance["deidentification"]["original_identifiers"] == "only in linkage.csv"

    # the linkage table leads from every shared key back to the planted originals
    linkage = pd.read_csv(outdir / "linkage.csv", dtype=str, keep_default_na=False)
    series = pd.read_parquet(outdir / "series.parquet")
    assert sorted(linkage["stack_key"]) == sorted(series["stack_key"])
    expected = {
        (patient, f"{PLANTED_ROOT}.{p}{s}.2", date)
        for p, (patient, _, dates) in enumerate(PLANTED, start=1)
        for s, date in enumerate(dates, start=1)
    }
    linked = linkage[["patient_id", "original_series_uid", "original_study_date"]].itertuples(index=False, name=None)
    assert set(linked) == expected
    merged = linkage.merge(series, on="stack_key", suffixes=("", "_shared"))
    assert (merged["patient_key"] == merged["patient_key_shared"]).all()
    assert (merged["study_date"] == merged["study_date_shared"]).all()
    shift = pd.to_datetime(merged["original_study_date"]) - pd.to_datetime(merged["study_date"])
    assert (shift.dt.days == -merged["date_offset_days"].astype(int)).all()
    assert shift.dt.days.between(365, 3650).all()


def test_privacy__same_salt_same_pseudonyms_and_another_salt_others(planted_root: Path) -> None:
    def identifiers(salt: str) -> pd.DataFrame:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ctframe.CTFrameWarning)
            catalog = ctframe.scan(planted_root, salt=salt)
        columns = ["patient_key", "study_uid", "series_uid", "sop_instance_uid", "frame_of_reference_uid", "study_date"]
        return catalog.sort_values("path")[columns].reset_index(drop=True)

    first, again, other = identifiers(SALT_A), identifiers(SALT_A), identifiers(SALT_B)
    pd.testing.assert_frame_equal(first, again)
    for column in ("patient_key", "study_uid", "series_uid", "sop_instance_uid", "frame_of_reference_uid"):
        assert not set(first[column]) & set(other[column]), column
    assert first["study_date"].tolist() != other["study_date"].tolist()  # another offset per patient
    # one pseudonym per original UID: 4 studies, 4 series, 18 SOP instances, 4 frames of reference
    assert [first[c].nunique() for c in ("study_uid", "series_uid", "sop_instance_uid", "frame_of_reference_uid")] == [
        4, 4, 18, 4,
    ]  # fmt: skip


@pytest.mark.parametrize("salt", [SALT_A, SALT_B])
def test_privacy__intervals_between_a_patients_scans_are_exact(planted_root: Path, salt: str) -> None:
    """Shifted dates and days_since_baseline keep the planted intervals to the day (29 February included)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctframe.CTFrameWarning)
        series = ctframe.series_table(ctframe.scan(planted_root, salt=salt))
    # the longitudinal table needs lung regions, which 8 slices or one slice cannot give: lung rows made up
    # around the real series' identifiers and acquisition columns (the table compares dates, not voxels)
    regions = pd.concat(
        [series.assign(series=series["stack_key"], region=r, volume_ml=v, hu_mean=-850.0, hu_p15=-900.0,
                       laa_950_pct=1.0, haa_pct=2.0, haa_volume_ml=80.0)
         for r, v in (("lungs", 4000.0), ("right_lung", 2100.0), ("left_lung", 1900.0))],
        ignore_index=True,
    )  # fmt: skip
    longitudinal = longitudinal_table(regions)
    for p, (patient, _, (first, second)) in enumerate(PLANTED, start=1):
        planted_days = (dt.date.fromisoformat(_spellings(second)[1]) - dt.date.fromisoformat(_spellings(first)[1])).days
        # the exact interval as pydicom reads it from the planted files: dates and times of day
        stamps = []
        for s in (1, 2):
            ds = pydicom.dcmread(next((planted_root / f"patient{p}" / f"study{s}").glob("*.dcm")))
            time = str(ds.get("StudyTime", "") or "").split(".")[0].ljust(6, "0")  # LIDC has none: midnight
            stamps.append(dt.datetime.strptime(ds.StudyDate + time[:6], "%Y%m%d%H%M%S"))
        interval_days = (stamps[1] - stamps[0]) / dt.timedelta(days=1)
        key = patient_key(patient, salt=salt)
        mine = series[series["patient_key"] == key].sort_values("study_datetime")
        assert len(mine) == 2, (patient, series["patient_key"].tolist())
        dates = pd.to_datetime(mine["study_date"], format="%Y%m%d")
        assert (dates.iloc[1] - dates.iloc[0]).days == planted_days
        shifted_interval = (mine["study_datetime"].iloc[1] - mine["study_datetime"].iloc[0]) / pd.Timedelta(days=1)
        assert shifted_interval == pytest.approx(interval_days, abs=1e-9)
        assert 365 <= (pd.Timestamp(first) - dates.iloc[0]).days <= 3650  # moved back 1 to 10 years
        days = longitudinal[longitudinal["patient_key"] == key]["days_since_baseline"]
        assert sorted(set(days)) == pytest.approx([0, interval_days], abs=1e-9)
        assert int(interval_days) == planted_days or stamps[1].time() < stamps[0].time()


def test_privacy__worker_processes_use_the_callers_salt(planted_root: Path, lidc_dir: Path) -> None:
    """Headers read in the scan's worker processes get the caller's salt, not one of their own."""
    import time

    def quiet_scan(**kwargs: Any) -> pd.DataFrame:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ctframe.CTFrameWarning)
            return ctframe.scan([planted_root, lidc_dir], salt=SALT_A, **kwargs)

    serial = quiet_scan(workers=1)
    deadline = time.monotonic() + 120
    with ctframe.config_context(scan={"min_files_for_processes": 1}):
        while True:  # a cold pool of fresh interpreters serves from the second scan on
            parallel = quiet_scan(workers=2)
            if parallel.attrs["scan_mode"].startswith("processes:") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert parallel.attrs["scan_mode"].startswith("processes:"), parallel.attrs["scan_mode"]
    columns = ["path", "patient_key", "study_uid", "series_uid", "sop_instance_uid", "study_date", "stack_key"]
    pd.testing.assert_frame_equal(serial[columns], parallel[columns])
    lidc = serial[serial["path"].str.startswith(str(lidc_dir))]
    assert lidc["series_uid"].iloc[0] == pseudonymous_uid(
        pydicom.dcmread(lidc["path"].iloc[0]).SeriesInstanceUID, salt=SALT_A
    )
