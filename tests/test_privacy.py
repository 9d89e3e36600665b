"""Pseudonyms, pseudonymous UIDs, date shifts, the salt and safe path components."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID

from ctframe.errors import ParameterError
from ctframe.privacy import (
    OFFSET_RANGE_DAYS,
    date_offset_days,
    linkage_table,
    patient_key,
    pseudonymous_uid,
    resolve_salt,
    safe_name,
    salt_source,
    shift_date,
)


def test_patient_key__stable_keyed_and_not_the_id() -> None:
    key = patient_key("12345", salt="s1")
    assert key == patient_key("12345", salt="s1")
    assert key != patient_key("12345", salt="s2")
    assert key != patient_key("12346", salt="s1")
    assert "12345" not in key and key.startswith("P-") and len(key) == 14


def test_patient_key__missing_id_uses_the_fallback() -> None:
    assert patient_key("", salt="s", fallback="study-1") != patient_key("", salt="s", fallback="study-2")
    assert patient_key(None, salt="s", fallback="x") == patient_key("  ", salt="s", fallback="x")


@pytest.fixture
def no_salt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No salt from the argument, the environment or the configuration; the kept salt file in tmp_path."""
    monkeypatch.delenv("CTFRAME_SALT", raising=False)
    monkeypatch.setenv("CTFRAME_SALT_FILE", str(tmp_path / "kept" / "salt"))
    return tmp_path / "kept" / "salt"


def test_resolve_salt__argument_then_environment_then_config_then_random(no_salt: Path, monkeypatch) -> None:
    from ctframe.config import config_context

    random = resolve_salt(None)
    assert len(random) == 64 and random != "ctframe-public-default-salt"
    assert "random" in salt_source(None) and random not in salt_source(None)
    with config_context(pseudonym={"salt": "from-config"}):
        assert resolve_salt(None) == "from-config"
        assert "configuration" in salt_source(None)
        monkeypatch.setenv("CTFRAME_SALT", "from-env")
        assert resolve_salt(None) == "from-env"
        assert resolve_salt("explicit") == "explicit"


def test_resolve_salt__random_salt_is_kept_private_and_reused(no_salt: Path) -> None:
    first = resolve_salt(None)
    assert no_salt.read_text().strip() == first
    assert stat.S_IMODE(os.stat(no_salt).st_mode) == 0o600  # readable by the user only
    code = "from ctframe.privacy import resolve_salt; print(resolve_salt(None))"
    other_process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other_process.stdout.strip() == first  # `ctframe scan` and a later `ctframe export` agree
    no_salt.unlink()
    assert resolve_salt(None) != first  # a new random key once the old one is gone


def test_resolve_salt__random_per_process_where_it_cannot_be_kept(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CTFRAME_SALT", raising=False)
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("CTFRAME_SALT_FILE", str(blocker / "salt"))  # a folder that cannot exist
    salt = resolve_salt(None)
    assert len(salt) == 64 and resolve_salt(None) == salt


def test_pseudonymous_uid__a_valid_stable_keyed_uid() -> None:
    uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.298806137288633453246975630178"
    pseudo = pseudonymous_uid(uid, salt="s")
    assert UID(pseudo).is_valid and len(pseudo) <= 64 and pseudo.startswith("2.25.")
    assert pseudo == pseudonymous_uid(uid + " ", salt="s") == pseudonymous_uid(uid + "\x00", salt="s")
    assert pseudo != pseudonymous_uid(uid, salt="t") and pseudo != pseudonymous_uid(uid[:-1] + "9", salt="s")
    assert "6279" not in pseudo[:10] and pseudonymous_uid("", salt="s") == "" and pseudonymous_uid(None) == ""
    many = {pseudonymous_uid(f"1.2.3.{k}", salt="s") for k in range(20000)}
    assert len(many) == 20000 and all(UID(u).is_valid for u in list(many)[:500])


def test_date_offset_days__one_offset_per_patient_within_the_documented_range() -> None:
    offsets = [date_offset_days(f"patient-{k}", salt="s") for k in range(2000)]
    low, high = OFFSET_RANGE_DAYS
    assert all(-high <= o <= -low for o in offsets)
    assert len(set(offsets)) > 1000  # spread out, not one shift for everyone
    assert date_offset_days("patient-1", salt="s") != date_offset_days("patient-1", salt="t")
    assert date_offset_days("", salt="s", fallback="a") != date_offset_days("", salt="s", fallback="b")


@pytest.mark.parametrize(
    ("first", "second"), [("20210304", "20210715"), ("20200228", "20200301"), ("19991231", "20000101")]
)
def test_shift_date__keeps_intervals_exact(first: str, second: str) -> None:
    def as_date(text: str) -> dt.date:
        return dt.datetime.strptime(text, "%Y%m%d").date()

    for offset in (-365, -366, -1461, -3650, date_offset_days("x", salt="s")):
        a, b = shift_date(first, offset), shift_date(second, offset)
        assert (as_date(b) - as_date(a)) == (as_date(second) - as_date(first))
        assert (as_date(first) - as_date(a)).days == -offset


@pytest.mark.parametrize("bad", ["", "2021-03-04", "20211304", "2021030", "garbage!", "20210304junk"])
def test_shift_date__an_invalid_date_is_dropped(bad: str) -> None:
    assert shift_date(bad, -400) == ""


def test_linkage_table__needs_a_catalog_with_the_original_values() -> None:
    import pandas as pd

    with pytest.raises(ParameterError, match="include_phi=True"):
        linkage_table(pd.DataFrame({"stack_key": ["a"], "series_uid": ["2.25.1"]}))


def test_pseudonymous_uid__pydicom_reads_a_file_carrying_it(lidc_dir: Path, tmp_path: Path) -> None:
    """A pseudonymous UID is a UID other DICOM tools accept (written and read back by pydicom)."""
    source = sorted(lidc_dir.glob("*.dcm"))[0]
    ds = pydicom.dcmread(source)
    ds.SeriesInstanceUID = pseudonymous_uid(ds.SeriesInstanceUID, salt="s")
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    back = pydicom.dcmread(tmp_path / "x.dcm")
    assert back.SeriesInstanceUID == ds.SeriesInstanceUID and UID(back.SeriesInstanceUID).is_valid


@pytest.mark.parametrize(
    ("text", "expected"),
    [("../../etc", "etc"), ("a/b\\c", "a_b_c"), ("..", "unnamed"), ("Smith^John", "Smith_John"), ("x" * 200, "x" * 80)],
)
def test_safe_name__cannot_escape_a_folder(text: str, expected: str) -> None:
    assert safe_name(text) == expected
    assert "/" not in safe_name(text) and ".." not in safe_name(text)
