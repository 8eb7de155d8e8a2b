"""Typed, validated configuration (filled in by the trainer)."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config value is wrong; the message names the field and the fix."""
