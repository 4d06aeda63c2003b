# -*- test-case-name: tests.cli.test_proctitle -*-
"""
``headscale serve`` shows itself to the system as Headscale does.

Headplane's native integration finds the server to signal after a DNS edit by
scanning ``/proc``: a process whose ``/proc/PID/comm`` is ``headscale`` and
whose ``/proc/PID/cmdline``, split at NULs with empty fields dropped, has
``serve`` as its second field. Run as ``python …/bin/headscale serve`` (a
console script) our cmdline is ``python``, the script path, ``serve``; run as
``python -m headscale_tw.cli.main serve`` even ``comm`` is ``python``.

:func:`present_as_headscale_serve` fixes both in place, Linux only, standard
library only:

* ``comm``: ``prctl(PR_SET_NAME, "headscale")``.
* ``cmdline``: the kernel serves it from the argument strings it put on the
  stack at exec (``arg_start``..``arg_end`` in ``/proc/self/stat``, fields 48
  and 49). We overwrite that area with ``headscale\\0serve\\0<other args>\\0`` and
  NUL padding, keeping its last byte NUL so the kernel returns the area as is.
  The new text is never longer than the old (``headscale`` is shorter than the
  interpreter path plus the script or module), and Python no longer reads the
  area after start-up (``sys.argv`` and ``sys.orig_argv`` are copies).

``setproctitle`` from PyPI was checked and does not do this: its title is one
C string, so the cmdline has a single field (``headscale serve``) and it sets
``comm`` to the same 15 characters; a title with a NUL in it is refused.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Sequence

__all__ = ["present_as_headscale_serve", "presented_as_headscale_serve", "new_cmdline", "PROCESS_NAME"]

PROCESS_NAME = "headscale"
_PR_SET_NAME = 15
_ARG_START_FIELD = 48  # 1-based field numbers of proc(5)'s /proc/PID/stat


def _note(message: str, **fields) -> None:
    from twisted.logger import Logger  # only on this rare path: the CLI imports no Twisted up front

    Logger(namespace=__name__).info(message, **fields)


def new_cmdline(args: Sequence[str]) -> bytes:
    """The NUL-separated cmdline ``headscale serve ARGS…`` for CLI ``args`` (``sys.argv[1:]``)."""
    rest = list(args)
    if "serve" in rest:
        rest.remove("serve")
    return b"\0".join(a.encode("utf-8", "surrogateescape") for a in [PROCESS_NAME, "serve", *rest]) + b"\0"


def _argument_area(stat_path: str) -> tuple[int, int]:
    with open(stat_path) as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3: comm may hold spaces
    first = _ARG_START_FIELD - 3
    return int(fields[first]), int(fields[first + 1])


def present_as_headscale_serve(args: Sequence[str], stat_path: str = "/proc/self/stat") -> bool:
    """
    Make this process's ``comm`` ``headscale`` and its cmdline ``headscale serve ARGS…``.

    Returns False (and changes nothing it could not) when not on Linux, when
    the kernel does not give the argument area, or when the new cmdline would
    not fit in it.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        named = libc.prctl(_PR_SET_NAME, PROCESS_NAME.encode(), 0, 0, 0) == 0
        start, end = _argument_area(stat_path)
    except (OSError, ValueError, IndexError) as e:
        _note("cannot rename the process to headscale serve: {error}", error=e)
        return False
    title = new_cmdline(args)
    if not (start and end > start and len(title) <= end - start):
        _note("cannot rename the process to headscale serve: no room in its argument area")
        return False
    ctypes.memmove(start, title + b"\0" * (end - start - len(title)), end - start)
    return named


def presented_as_headscale_serve(command: Callable) -> Callable:
    """
    Wrap the ``serve`` command: when it runs for real (no test reactor given),
    rename the process first, so Headplane finds and signals it.
    """

    def serve(ctx) -> None:
        if getattr(ctx, "reactor", None) is None:
            present_as_headscale_serve(sys.argv[1:])
        return command(ctx)

    serve.__doc__ = command.__doc__
    return serve
