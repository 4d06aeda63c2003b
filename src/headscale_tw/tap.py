# -*- test-case-name: tests.test_tap -*-
"""
``twistd headscale``: command-line ``Options`` and ``makeService``, nothing else.
"""

from __future__ import annotations

from twisted.python import usage

from headscale_tw.config.loader import ConfigError, load_config

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    """Options for ``twistd headscale``."""

    optParameters = [
        ["config", "c", None, "Path to config.yaml (default: search HEADSCALE_CONFIG, ./, ~/.headscale/, /etc/headscale/)."],
    ]

    def postOptions(self) -> None:
        try:
            self["config_object"] = load_config(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e))


def makeService(options: Options):
    """Build the service tree for ``twistd`` from parsed ``Options``."""
    from twisted.internet import reactor

    from headscale_tw.service import build_service

    return build_service(options["config_object"], reactor)
