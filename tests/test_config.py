"""Configuration: defaults, user overrides, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

import ctframe
from ctframe.config import config_context, default_config_path, get_config, load_config
from ctframe.errors import ConfigError


def test_load_config__defaults_come_from_the_yaml() -> None:
    cfg = load_config()
    assert default_config_path().name == "default.yaml"
    assert cfg["io"]["slices_per_chunk"] == 32
    assert cfg["hu"]["fill_below_hu"] == -1500.0


def test_load_config__user_file_overrides_a_subset(tmp_path: Path) -> None:
    user = tmp_path / "user.yaml"
    user.write_text("io:\n  slices_per_chunk: 8\n")
    cfg = load_config(user)
    assert cfg["io"]["slices_per_chunk"] == 8
    assert cfg["hu"]["fill_below_hu"] == -1500.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "io:\n  slice_per_chunk: 8\n",
            r"unknown config key 'io.slice_per_chunk'; allowed keys here: "
            r"compressed_slices_per_chunk, slices_per_chunk",
        ),
        ("io:\n  slices_per_chunk: many\n", r"'io.slices_per_chunk' must be of type int, got 'many'"),
        ("io:\n  slices_per_chunk: 0\n", r"'io.slices_per_chunk' is 0; it must lie in \[1, 100000\]"),
        ("nonsense: 1\n", r"unknown config key 'nonsense'"),
        ("- a\n- b\n", r"must hold a mapping of sections"),
        ("io: [\n", r"not valid YAML"),
    ],
)
def test_load_config__bad_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    user = tmp_path / "bad.yaml"
    user.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(user)


def test_load_config__missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml")


def test_config_context__applies_and_restores() -> None:
    before = get_config()["io"]["slices_per_chunk"]
    with config_context(io={"slices_per_chunk": 4}):
        assert get_config()["io"]["slices_per_chunk"] == 4
    assert get_config()["io"]["slices_per_chunk"] == before


def test_get_config__returns_a_copy() -> None:
    cfg = ctframe.get_config()
    cfg["io"]["slices_per_chunk"] = 999
    assert ctframe.get_config()["io"]["slices_per_chunk"] != 999
