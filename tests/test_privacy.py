"""Pseudonyms and safe path components."""

from __future__ import annotations

import pytest

from ctframe.privacy import patient_key, resolve_salt, safe_name


def test_patient_key__stable_keyed_and_not_the_id() -> None:
    key = patient_key("12345", salt="s1")
    assert key == patient_key("12345", salt="s1")
    assert key != patient_key("12345", salt="s2")
    assert key != patient_key("12346", salt="s1")
    assert "12345" not in key and key.startswith("P-") and len(key) == 14


def test_patient_key__missing_id_uses_the_fallback() -> None:
    assert patient_key("", salt="s", fallback="study-1") != patient_key("", salt="s", fallback="study-2")
    assert patient_key(None, salt="s", fallback="x") == patient_key("  ", salt="s", fallback="x")


def test_resolve_salt__argument_then_environment_then_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CTFRAME_SALT", raising=False)
    assert resolve_salt(None) == "ctframe-public-default-salt"
    monkeypatch.setenv("CTFRAME_SALT", "from-env")
    assert resolve_salt(None) == "from-env"
    assert resolve_salt("explicit") == "explicit"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("../../etc", "etc"), ("a/b\\c", "a_b_c"), ("..", "unnamed"), ("Smith^John", "Smith_John"), ("x" * 200, "x" * 80)],
)
def test_safe_name__cannot_escape_a_folder(text: str, expected: str) -> None:
    assert safe_name(text) == expected
    assert "/" not in safe_name(text) and ".." not in safe_name(text)
