"""Configuration: ``configs/default.yaml`` merged with a user file, validated.

The default file is the single source of truth for keys, types and defaults.
A user file may override any subset; unknown keys, wrong types and values
outside an allowed set raise :class:`~ctframe.errors.ConfigError` naming the
key and what is allowed.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ctframe.errors import ConfigError

__all__ = ["config_context", "default_config_path", "get_config", "load_config"]

#: Keys whose value must be one of a fixed set (dotted path -> allowed values).
ALLOWED_VALUES: dict[str, tuple[Any, ...]] = {
    "window.function": ("LINEAR", "LINEAR_EXACT", "SIGMOID"),
}

#: Keys whose numeric value must lie in a closed range (dotted path -> (lo, hi)).
RANGES: dict[str, tuple[float, float]] = {
    "io.slices_per_chunk": (1, 100_000),
    "io.compressed_slices_per_chunk": (1, 100_000),
    "scan.workers": (0, 1024),
    "scan.min_files_for_processes": (0, 10**9),
    "remote.retries": (0, 100),
    "remote.backoff_s": (0.0, 60.0),
    "qc.gap_factor": (1.0, 100.0),
    "qc.irregular_tolerance": (0.0, 10.0),
    "qc.duplicate_tolerance_mm": (0.0, 100.0),
    "qc.orientation_tolerance": (0.0, 0.1),
    "qc.pixel_spacing_tolerance": (0.0, 0.1),
    "histogram.bin_width_hu": (1, 4096),
    "histogram.min_hu": (-2048, 4095),
    "histogram.max_hu": (-2047, 4096),
    "selection.min_slices": (1, 100_000),
    "segmentation.threshold_hu": (-1000.0, 0.0),
    "segmentation.body_threshold_hu": (-1000.0, 0.0),
    "segmentation.body_opening_mm": (0.0, 50.0),
    "segmentation.airway_hu": (-1100.0, -500.0),
    "segmentation.airway_step_hu": (0.0, 200.0),
    "segmentation.airway_max_ml": (1.0, 5000.0),
    "segmentation.airway_margin_mm": (0.0, 20.0),
    "segmentation.trachea_search_mm": (0.0, 500.0),
    "segmentation.trachea_min_area_mm2": (0.0, 10_000.0),
    "segmentation.trachea_max_area_mm2": (1.0, 100_000.0),
    "segmentation.trachea_max_offset_mm": (0.0, 500.0),
    "segmentation.airway_track_growth": (1.0, 100.0),
    "segmentation.airway_track_hu": (-1100.0, -500.0),
    "segmentation.gas_hu": (-1100.0, -500.0),
    "segmentation.min_lung_ml": (0.0, 10_000.0),
    "segmentation.split_max_mm": (0.0, 200.0),
    "segmentation.min_piece_width_mm": (0.0, 50.0),
    "segmentation.envelope_mm": (0.0, 50.0),
    "segmentation.envelope_grid_mm": (0.1, 10.0),
    "segmentation.envelope_z_mm": (0.0, 200.0),
    "segmentation.pocket_min_ml": (0.0, 10_000.0),
    "segmentation.pocket_wall_fraction": (0.0, 1.0),
    "segmentation.pocket_rim_mm": (0.0, 20.0),
    "segmentation.min_slices": (1.0, 10_000.0),
    "segmentation.min_extent_mm": (0.0, 2000.0),
    "segmentation.qc_min_total_ml": (0.0, 100_000.0),
    "segmentation.qc_max_total_ml": (0.0, 100_000.0),
    "segmentation.qc_min_ratio": (0.0, 100.0),
    "segmentation.qc_max_ratio": (0.0, 100.0),
    "segmentation.qc_cut_min_mm2": (0.0, 100_000.0),
    "segmentation.bone_hu": (0.0, 3000.0),
}

#: List-valued keys whose items must come from a fixed set.
LIST_CHOICES: dict[str, tuple[str, ...]] = {
    "selection.prefer": ("thinnest", "most_slices"),
    "selection.orientations": ("AXIAL", "CORONAL", "SAGITTAL", "OBLIQUE", "UNKNOWN"),
    "cohort.regions": ("scan", "body", "lungs", "right_lung", "left_lung"),
}

_active: dict[str, Any] | None = None


def default_config_path() -> Path:
    """Path of the packaged ``default.yaml`` (wheel) or the repository's copy."""
    packaged = resources.files("ctframe").joinpath("configs", "default.yaml")
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(data).__name__}")
    return data


def _type_ok(default: Any, value: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, list):
        return isinstance(value, list)
    if default is None:
        return True
    return isinstance(value, type(default))


def _merge(default: Mapping[str, Any], user: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    merged = copy.deepcopy(dict(default))
    for key, value in user.items():
        path = f"{prefix}{key}"
        if key not in default:
            allowed = ", ".join(sorted(map(str, default))) or "(none)"
            raise ConfigError(f"unknown config key '{path}'; allowed keys here: {allowed}")
        base = default[key]
        if isinstance(base, dict) and not _is_open_mapping(path):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' must be a mapping with keys: {', '.join(base)}")
            merged[key] = _merge(base, value, prefix=path + ".")
            continue
        if isinstance(base, dict):  # open mapping (e.g. window presets): new entries allowed
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' must be a mapping")
            merged[key] = {**copy.deepcopy(base), **copy.deepcopy(value)}
            continue
        if not _type_ok(base, value):
            raise ConfigError(f"config key '{path}' must be of type {type(base).__name__}, got {value!r}")
        merged[key] = float(value) if isinstance(base, float) else copy.deepcopy(value)
    return merged


#: Mappings whose entries are user-defined (names are free, not fixed keys).
OPEN_MAPPINGS: set[str] = {"window.presets"}


def _is_open_mapping(path: str) -> bool:
    return path in OPEN_MAPPINGS


def _check_values(cfg: Mapping[str, Any]) -> None:
    for path, allowed in ALLOWED_VALUES.items():
        value = _lookup(cfg, path)
        if value not in allowed:
            raise ConfigError(f"config key '{path}' is {value!r}; allowed values: {', '.join(map(repr, allowed))}")
    for path, (lo, hi) in RANGES.items():
        value = _lookup(cfg, path)
        if not lo <= value <= hi:
            raise ConfigError(f"config key '{path}' is {value!r}; it must lie in [{lo}, {hi}]")
    _check_window_presets(cfg)
    _check_lists(cfg)


def _check_lists(cfg: Mapping[str, Any]) -> None:
    """List items from fixed sets, percentiles in [0, 100], ordered HU ranges."""
    for path, allowed in LIST_CHOICES.items():
        for item in _lookup(cfg, path):
            if item not in allowed:
                raise ConfigError(f"config key '{path}' holds {item!r}; allowed values: {', '.join(allowed)}")
    for q in _lookup(cfg, "statistics.percentiles"):
        if isinstance(q, bool) or not isinstance(q, int | float) or not 0 <= q <= 100:
            raise ConfigError(f"config key 'statistics.percentiles' holds {q!r}; percentiles lie in [0, 100]")
    for path in ("statistics.laa_thresholds_hu", "statistics.haa_range_hu", "statistics.consolidation_range_hu"):
        for value in _lookup(cfg, path):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"config key '{path}' holds {value!r}; thresholds are whole HU numbers")
    for path in ("statistics.haa_range_hu", "statistics.consolidation_range_hu"):
        pair = _lookup(cfg, path)
        if len(pair) != 2 or pair[0] >= pair[1]:
            raise ConfigError(f"config key '{path}' is {pair!r}; give [low, high] with low < high (HU)")
    if _lookup(cfg, "histogram.min_hu") >= _lookup(cfg, "histogram.max_hu"):
        raise ConfigError("config keys 'histogram.min_hu' and 'histogram.max_hu': min_hu must be below max_hu")


def _check_window_presets(cfg: Mapping[str, Any]) -> None:
    """Each ``window.presets`` entry is ``{level_hu: number, width_hu: number > 0}``."""
    for name, entry in cfg.get("window", {}).get("presets", {}).items():
        key = f"window.presets.{name}"
        if name == "dicom":
            raise ConfigError(f"config key '{key}': 'dicom' is reserved for the series' own window; use another name")
        if not isinstance(entry, dict) or set(entry) != {"level_hu", "width_hu"}:
            raise ConfigError(
                f"config key '{key}' must be a mapping with exactly the keys level_hu and width_hu (HU), got {entry!r}"
            )
        for field in ("level_hu", "width_hu"):
            value = entry[field]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or value != value
                or abs(value) == float("inf")
            ):
                raise ConfigError(f"config key '{key}.{field}' must be a finite number (HU), got {value!r}")
        if entry["width_hu"] <= 0:
            raise ConfigError(f"config key '{key}.width_hu' is {entry['width_hu']!r}; a window width must be > 0 HU")


def _lookup(cfg: Mapping[str, Any], path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        node = node[part]
    return node


def load_config(
    path: str | os.PathLike[str] | None = None, *, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Return the default configuration merged with a user file and overrides.

    Parameters
    ----------
    path : path-like, optional
        A YAML file overriding any subset of ``configs/default.yaml``.
    overrides : mapping, optional
        Nested mapping applied after the file.

    Returns
    -------
    dict
        The merged, validated configuration (a fresh copy).

    Raises
    ------
    ConfigError
        Unknown key, wrong type, value out of range, unreadable or invalid file.

    Examples
    --------
    >>> cfg = load_config(overrides={"io": {"slices_per_chunk": 16}})
    >>> cfg["io"]["slices_per_chunk"]
    16
    """
    cfg = _read_yaml(default_config_path())
    if path is not None:
        cfg = _merge(cfg, _read_yaml(Path(path)))
    if overrides:
        cfg = _merge(cfg, overrides)
    _check_values(cfg)
    return cfg


def get_config() -> dict[str, Any]:
    """Return the active configuration (the defaults unless :func:`config_context` is in use).

    Returns
    -------
    dict
        A copy; changing it changes nothing.
    """
    global _active
    if _active is None:
        _active = load_config()
    return copy.deepcopy(_active)


@contextlib.contextmanager
def config_context(config: Mapping[str, Any] | None = None, **sections: Any) -> Iterator[dict[str, Any]]:
    """Make a configuration active within a ``with`` block.

    Parameters
    ----------
    config : mapping, optional
        A full configuration from :func:`load_config`.
    **sections
        Overrides applied on top, e.g. ``io={"slices_per_chunk": 8}``.

    Examples
    --------
    >>> with config_context(io={"slices_per_chunk": 8}):
    ...     get_config()["io"]["slices_per_chunk"]
    8
    """
    global _active
    previous = _active
    base = dict(config) if config is not None else get_config()
    new = _merge(base, sections) if sections else copy.deepcopy(base)
    _check_values(new)
    _active = new
    try:
        yield copy.deepcopy(new)
    finally:
        _active = previous
