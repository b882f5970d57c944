"""The one error type of config checks, which the entry points print as one line."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value that composes but makes no sense; its message is one line."""
