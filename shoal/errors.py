"""Configuration errors, shared by the config sections."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration file or override is invalid (unknown key, wrong type, bad value)."""


def check(cond: bool, key: str, msg: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")
