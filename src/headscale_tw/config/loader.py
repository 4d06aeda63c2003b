# -*- test-case-name: tests.config.test_loader -*-
"""
Reading Headscale's YAML into :class:`~headscale_tw.config.model.Config`.

``parse_config`` takes a mapping or YAML text (tests build configs inline);
``load_config`` finds and reads the file (search order ``path`` argument,
``HEADSCALE_CONFIG``, ``./config.yaml``, ``~/.headscale/config.yaml``,
``/etc/headscale/config.yaml``; none found = embedded defaults) and applies
``HEADSCALE_*`` environment overrides.

Placeholder until the config work lands: only the embedded defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from headscale_tw.config.model import Config

__all__ = ["ConfigError", "parse_config", "load_config"]


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and the problem."""


def parse_config(data: Mapping | str | None, environ: Mapping[str, str] | None = None) -> Config:
    """Build a ``Config`` from a mapping or YAML text plus environment overrides."""
    return Config()


def load_config(path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Find, read and parse the configuration file."""
    environ = os.environ if environ is None else environ
    return parse_config(None, environ)
