"""De-identification: pseudonymous keys and UIDs, shifted dates, the linkage table.

ctframe follows DICOM PS3.15 Annex E's Basic Application Level Confidentiality
Profile with the *Retain Longitudinal Temporal Information with Modified Dates*
option, at the one place every output comes from: the catalog built by
:func:`ctframe.scan` (:func:`ctframe.dicom.read_header`). There

- the PatientID becomes a *patient key* ``P-`` + 12 hex digits of an
  HMAC-SHA256 (:func:`patient_key`);
- every instance UID (Study, Series, SOP Instance, Frame of Reference) becomes
  ``2.25.<decimal>`` from the first 128 bits of an HMAC-SHA256 of the UID
  (:func:`pseudonymous_uid`): a valid DICOM UID, the same for the same UID and
  key, different for different UIDs (a collision needs about 2**64 UIDs);
- the study date moves back by a whole number of days, 365 to 3650, that is the
  same for all studies of one patient (:func:`date_offset_days`), so intervals
  between a patient's scans (``days_since_baseline``) are exact, and the time
  of day is kept.

Stack keys, the DataTree, attrs, tables, figures, the report, warnings and
error messages are all made from the catalog, so they inherit the pseudonyms.
Names, birth dates, accession numbers and the other :data:`PHI_KEYWORDS` are not
read at all unless asked for (``include_phi=True``, ``--keep-identifiers``);
then they and the original UIDs and dates go only into extra catalog columns
(``scan.PHI_COLUMNS``) and the separate :func:`linkage_table`, never into the
shared tables.

The key ("salt") of every hash is, in this order:

1. the ``salt`` argument of the function being called, else
2. the ``CTFRAME_SALT`` environment variable, else
3. ``pseudonym.salt`` of the configuration, when not empty, else
4. a random key made on first use (``secrets.token_hex(32)``) and kept, readable
   by the user only, in ``$CTFRAME_SALT_FILE`` (default
   ``~/.config/ctframe/salt``), so that ``ctframe scan`` and a later
   ``ctframe export --series KEY`` agree. Where that file cannot be written the
   key is random per process.

No salt is ever written into an output (provenance says only where it came
from: :func:`salt_source`). The same salt gives the same keys, UIDs and date
shifts on every run; whoever holds it and a list of PatientIDs or UIDs can
recompute them, so keep it like a password.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path
from typing import Any

__all__ = [
    "LINKAGE_COLUMNS",
    "PHI_KEYWORDS",
    "date_offset_days",
    "linkage_table",
    "patient_key",
    "pseudonymous_uid",
    "resolve_salt",
    "safe_name",
    "salt_source",
    "shift_date",
]

#: DICOM keywords whose values identify a person or institution. They never
#: reach tables, attrs, logs or error messages unless the caller opts in
#: (``include_phi=True``).
PHI_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "RequestingPhysician",
    "StationName",
    "DeviceSerialNumber",
    "StudyID",
)

#: Columns of :func:`linkage_table`: the pseudonymous keys, then the original values.
LINKAGE_COLUMNS: tuple[str, ...] = (
    "stack_key", "patient_key", "study_uid", "series_uid", "study_date", "date_offset_days",
    "patient_id", "patient_name", "patient_birth_date", "accession_number", "institution_name",
    "referring_physician_name", "original_study_uid", "original_series_uid", "original_frame_of_reference_uid",
    "original_study_date", "original_study_time",
)  # fmt: skip

#: Whole days every date of a patient moves back by: at least a year, at most ten.
OFFSET_RANGE_DAYS = (365, 3650)
_MISSING_ID = "\x00missing-patient-id"
_PROCESS_SALT: list[str] = []


def _salt_file() -> Path:
    env = os.environ.get("CTFRAME_SALT_FILE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "ctframe" / "salt"


def _random_salt() -> str:
    """The kept random salt (made on first use), or one per process where it cannot be kept."""
    path = _salt_file()
    try:
        text = path.read_text().strip()
        if text:
            return text
    except OSError:
        pass
    fresh = secrets.token_hex(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fp:
            fp.write(fresh + "\n")
        try:
            os.link(tmp, path)  # fails if another process made it first: theirs wins
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        text = path.read_text().strip()
        if text:
            return text
    except OSError:
        pass
    if not _PROCESS_SALT:
        _PROCESS_SALT.append(fresh)
    return _PROCESS_SALT[0]


def salt_source(salt: str | None = None) -> str:
    """Where the salt :func:`resolve_salt` picks comes from, in words (never the salt).

    Examples
    --------
    >>> salt_source("my-secret")
    'given by the caller (not recorded)'
    """
    if salt:
        return "given by the caller (not recorded)"
    if os.environ.get("CTFRAME_SALT"):
        return "CTFRAME_SALT environment variable (not recorded)"
    from ctframe.config import get_config

    if str(get_config()["pseudonym"]["salt"] or ""):
        return "pseudonym.salt of the configuration (not recorded)"
    return "random, kept by the user who ran it (not recorded)"


def resolve_salt(salt: str | None = None) -> str:
    """Return the salt to use: the argument, ``$CTFRAME_SALT``, the configuration or a random one.

    Parameters
    ----------
    salt : str, optional
        An explicit salt; wins over everything else.

    Returns
    -------
    str
        The salt.

    Examples
    --------
    >>> resolve_salt("my-secret")
    'my-secret'
    """
    if salt:
        return salt
    env = os.environ.get("CTFRAME_SALT")
    if env:
        return env
    from ctframe.config import get_config

    return str(get_config()["pseudonym"]["salt"] or "") or _random_salt()


def _digest(salt: str, domain: str, value: str) -> bytes:
    message = domain.encode() + b"\x00" + value.encode("utf-8", "replace")
    return hmac.new(salt.encode("utf-8", "replace"), message, hashlib.sha256).digest()


def patient_key(patient_id: str | None, *, salt: str | None = None, fallback: str = "") -> str:
    """Pseudonymise a PatientID as ``P-`` plus 12 hex digits of an HMAC-SHA256.

    Parameters
    ----------
    patient_id : str or None
        The PatientID as stored. Empty or missing IDs are keyed on `fallback`
        (for example the study UID) so that unrelated studies do not merge.
    salt : str, optional
        Key of the hash; see :func:`resolve_salt`.
    fallback : str
        Used in place of a missing PatientID.

    Returns
    -------
    str
        A stable pseudonym such as ``'P-1f3a...'``.

    Examples
    --------
    >>> patient_key("12345", salt="s")
    'P-dae8a8fd3bd0'
    >>> patient_key("12345", salt="s") != patient_key("12345", salt="t")
    True
    """
    value = (patient_id or "").strip() or _MISSING_ID + fallback
    digest = hmac.new(resolve_salt(salt).encode(), value.encode("utf-8", "replace"), hashlib.sha256)
    return "P-" + digest.hexdigest()[:12]


@functools.lru_cache(maxsize=65536)
def _uid_hash(uid: str, salt: str) -> str:
    return "2.25." + str(int.from_bytes(_digest(salt, "uid", uid)[:16], "big"))


def pseudonymous_uid(uid: str | None, *, salt: str | None = None) -> str:
    """Replace a DICOM UID by ``2.25.`` and the decimal of 128 bits of its HMAC-SHA256.

    Parameters
    ----------
    uid : str or None
        A UID as stored (surrounding spaces and NULs are ignored).
    salt : str, optional
        Key of the hash; see :func:`resolve_salt`.

    Returns
    -------
    str
        A valid UID (``2.25`` is the root for UUID-derived UIDs, at most 44
        characters), the same for the same `uid` and salt; ``""`` for an empty
        `uid`.

    Examples
    --------
    >>> pseudonymous_uid("1.2.840.113619.2.55.3.1", salt="s")
    '2.25.337093341026948609332066696400551080906'
    >>> pseudonymous_uid("", salt="s")
    ''
    """
    text = str(uid or "").strip(" \x00")
    return _uid_hash(text, resolve_salt(salt)) if text else ""


def date_offset_days(patient_id: str | None, *, salt: str | None = None, fallback: str = "") -> int:
    """The whole days by which every date of one patient moves (negative: back in time).

    Derived from an HMAC of the PatientID (or of `fallback` when it is missing,
    like :func:`patient_key`): the same for all studies of a patient, so
    intervals between them stay exact; between -3650 and -365.

    Examples
    --------
    >>> date_offset_days("12345", salt="s")
    -3026
    >>> date_offset_days("12345", salt="s") == date_offset_days(" 12345 ", salt="s")
    True
    """
    value = (patient_id or "").strip() or _MISSING_ID + fallback
    low, high = OFFSET_RANGE_DAYS
    number = int.from_bytes(_digest(resolve_salt(salt), "date-offset", value)[:8], "big")
    return -(low + number % (high - low + 1))


def shift_date(date: str | None, offset_days: int) -> str:
    """A DICOM date (``YYYYMMDD``) moved by `offset_days`; ``""`` if it is not a valid date.

    An invalid date is dropped, never passed on: it may still identify.

    Examples
    --------
    >>> shift_date("20210304", -365)
    '20200304'
    >>> shift_date("2021-03-04", -365)
    ''
    """
    text = str(date or "").strip(" \x00")
    if not re.fullmatch(r"\d{8}", text):
        return ""
    try:
        day = _dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        return (day + _dt.timedelta(days=int(offset_days))).strftime("%Y%m%d")
    except (ValueError, OverflowError):
        return ""


def linkage_table(catalog: Any) -> Any:
    """One row per stack: the pseudonymous keys beside the original identifiers.

    The only place ctframe puts PatientIDs, names, original UIDs and dates;
    keep it apart from the shared tables (``ctframe summarize
    --keep-identifiers`` writes it as ``linkage.csv``).

    Parameters
    ----------
    catalog : DataFrame
        From ``ctframe.scan(..., include_phi=True)``.

    Returns
    -------
    DataFrame
        :data:`LINKAGE_COLUMNS`, one row per ``stack_key``, sorted by patient key,
        shifted date and stack key.

    Raises
    ------
    ParameterError
        The catalog was scanned without ``include_phi=True`` (it has no
        original values to link to).
    """
    import pandas as pd

    from ctframe.errors import ParameterError

    if "original_series_uid" not in catalog:
        raise ParameterError(
            "the catalog holds no original identifiers: scan with ctframe.scan(..., include_phi=True) "
            "to build a linkage table"
        )
    rows = catalog.drop_duplicates("stack_key")
    out = rows.reindex(columns=[c for c in LINKAGE_COLUMNS if c != "date_offset_days"]).copy()
    original = pd.to_datetime(rows["original_study_date"], format="%Y%m%d", errors="coerce")
    shifted = pd.to_datetime(rows["study_date"], format="%Y%m%d", errors="coerce")
    out["date_offset_days"] = ((shifted - original) / pd.Timedelta(days=1)).astype("Int64")
    out = out.reindex(columns=list(LINKAGE_COLUMNS))
    return out.sort_values(["patient_key", "study_date", "stack_key"]).reset_index(drop=True)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, *, max_length: int = 80) -> str:
    """Turn any text into a single safe path component.

    Separators, ``..`` and other special characters are replaced so that the
    result can never escape the directory it is joined to.

    Examples
    --------
    >>> safe_name("../../etc/passwd")
    'etc_passwd'
    """
    cleaned = _UNSAFE.sub("_", text).strip("._-")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    return (cleaned or "unnamed")[:max_length]
