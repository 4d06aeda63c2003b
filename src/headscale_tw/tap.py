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
        ["worker-index", None, None, "Internal: run as worker N of a `workers` > 1 supervisor (docs/workers.md)."],
    ]

    def postOptions(self) -> None:
        if self["worker-index"] is not None:
            try:
                self["worker-index"] = int(self["worker-index"])
            except ValueError:
                raise usage.UsageError(f"--worker-index {self['worker-index']!r} is not a number") from None
        try:
            self["config_object"] = load_config(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e))


def makeService(options: Options):
    """Build the service tree for ``twistd`` from parsed ``Options``.

    The log goes where twistd's own options send it, behind ``log.level``; a
    failed start makes twistd exit non-zero (:func:`~headscale_tw.exit_status.exit_with_status`),
    and a daemonising twistd's parent exits only once the server serves, or 1
    with the reason when the start failed, however late.
    """
    from twisted.internet import reactor

    from headscale_tw.exit_status import exit_with_status
    from headscale_tw.logs import twistd_observer

    config = options["config_object"]
    twistd_options = options.parent
    observer = twistd_observer(twistd_options, config.log) if twistd_options is not None else None
    index = options["worker-index"]
    status_pipe = None
    if index is None and config.workers > 1:  # the supervisor of the workers (docs/workers.md)
        from headscale_tw.supervisor import supervisor_service

        supervisor = supervisor_service(config, reactor, observer, twistd_options)
        if twistd_options is not None:
            exit_with_status(supervisor)
        return supervisor  # the supervisor never imports the server (headscale_tw.service)
    if index is not None:
        from headscale_tw.supervisor import STATUS_FD, die_with_parent, worker_observer
        from headscale_tw.workers import worker_config

        try:
            config = worker_config(config, index)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        die_with_parent()
        observer = worker_observer(observer, index) if observer is not None else None
        status_pipe = STATUS_FD
    from headscale_tw.service import build_service

    top = build_service(config, reactor, log_observer=observer, raise_early_failure=twistd_options is not None,
                        twistd_options=twistd_options, status_pipe=status_pipe)
    if twistd_options is not None:
        exit_with_status(top)
    return top
