"""Pseudonymous patient keys and the list of identifying DICOM attributes.

Tables, file names, logs and attrs identify patients by a *pseudonym*: a keyed
hash (HMAC-SHA256) of the PatientID. The key ("salt") is chosen by the user:

1. the ``salt`` argument of the function being called, else
2. the ``CTFRAME_SALT`` environment variable, else
3. ``pseudonym.salt`` of the configuration (``configs/default.yaml``).

The built-in default salt is public, so anyone holding a list of PatientIDs
could recompute the default keys. Set your own salt (and keep it) when tables
leave your institution; the same salt gives the same keys on every run.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

__all__ = ["PHI_KEYWORDS", "patient_key", "resolve_salt", "safe_name"]

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

DEFAULT_SALT = "ctframe-public-default-salt"
_MISSING_ID = "\x00missing-patient-id"


def resolve_salt(salt: str | None = None) -> str:
    """Return the salt to use: the argument, ``$CTFRAME_SALT`` or the default.

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

    return str(get_config()["pseudonym"]["salt"]) or DEFAULT_SALT


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
    >>> patient_key("12345", salt="s") == patient_key("12345", salt="s")
    True
    >>> patient_key("12345", salt="s") != patient_key("12345", salt="t")
    True
    """
    value = (patient_id or "").strip() or _MISSING_ID + fallback
    digest = hmac.new(resolve_salt(salt).encode(), value.encode("utf-8", "replace"), hashlib.sha256)
    return "P-" + digest.hexdigest()[:12]


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
