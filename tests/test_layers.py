"""
The layers' import graph: ``control/`` and ``policy/`` import neither the web
layer, nor any storage module but the row models, nor socket-level modules; and
``storage/`` imports nothing of the layers above it.

The check reads the source files with :mod:`ast`, so an import inside a function
counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial import unittest

import headscale_tw

_SRC = Path(headscale_tw.__file__).resolve().parent

#: The domain packages whose imports are checked.
DOMAIN = ("control", "policy")

#: Module prefixes the domain must not import: the web layer, SQL and the
#: database drivers, sockets and Twisted's transports and servers.
FORBIDDEN = (
    "headscale_tw.web",
    "headscale_tw.storage",
    "headscale_tw.noise",
    "headscale_tw.cli",
    "headscale_tw.service",
    "twisted.web",
    "twisted.enterprise",
    "twisted.internet.reactor",
    "twisted.internet.tcp",
    "twisted.internet.udp",
    "twisted.internet.unix",
    "twisted.internet.ssl",
    "twisted.internet.endpoints",
    "twisted.internet.protocol",
    "twisted.internet.abstract",
    "twisted.application.internet",
    "twisted.application.strports",
    "klein",
    "treq",
    "socket",
    "ssl",
    "sqlite3",
    "psycopg",
    "psycopg2",
)

#: Allowed although a forbidden prefix covers them: frozen row models only.
ALLOWED = ("headscale_tw.storage.models",)

#: What the stores must not import: every layer above them.
ABOVE_STORAGE = (
    "headscale_tw.control",
    "headscale_tw.policy",
    "headscale_tw.web",
    "headscale_tw.noise",
    "headscale_tw.derp",
    "headscale_tw.oidc",
    "headscale_tw.certs",
    "headscale_tw.cli",
    "headscale_tw.service",
)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """Every ``(line, module)`` that ``source`` (the text of ``module``) imports, at any depth.

    ``from package import name`` yields ``package.name`` too, so that
    ``from twisted.internet import reactor`` is seen as the reactor.
    """
    package = module.rsplit(".", 1)[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            found.append((node.lineno, base))
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return found


def violations(source: str, module: str, forbidden=FORBIDDEN, allowed=ALLOWED) -> list[str]:
    """``module:line imports name`` for each import in ``source`` under a ``forbidden`` prefix."""
    bad = []
    for line, name in imported_modules(source, module):
        if any(_within(name, prefix) for prefix in allowed):
            continue
        if any(_within(name, prefix) for prefix in forbidden):
            bad.append(f"{module}:{line} imports {name}")
    return sorted(set(bad))


def package_violations(packages, forbidden, allowed=()) -> tuple[int, list[str]]:
    """How many modules under ``packages`` were read, and their forbidden imports."""
    bad: list[str] = []
    checked = 0
    for package in packages:
        for path in sorted((_SRC / package).rglob("*.py")):
            module = ".".join(path.relative_to(_SRC.parent).with_suffix("").parts)
            bad.extend(violations(path.read_text(encoding="utf-8"), module, forbidden, allowed))
            checked += 1
    return checked, bad


class DomainImportTests(unittest.TestCase):
    """The domain reaches other layers only in the allowed direction."""

    def test_domain_imports_no_web_sql_or_sockets(self):
        """No module under ``control/`` or ``policy/`` imports web, storage (but models) or socket modules."""
        checked, bad = package_violations(DOMAIN, FORBIDDEN, ALLOWED)
        self.assertGreater(checked, 20)
        self.assertEqual(bad, [])

    def test_stores_import_nothing_above_them(self):
        """No module under ``storage/`` imports the domain, the web layer or a protocol package."""
        checked, bad = package_violations(("storage",), ABOVE_STORAGE)
        self.assertGreater(checked, 10)
        self.assertEqual(bad, [])

    def test_check_sees_each_kind_of_import(self):
        """The check reports plain, from-, function-level and relative imports, and lets the row models through."""
        source = (
            "import socket\n"
            "from twisted.internet import reactor\n"
            "from headscale_tw.storage.models import Node\n"
            "from headscale_tw.storage.stores.nodes import NodeStore\n"
            "def f():\n"
            "    from twisted.web.resource import Resource\n"
            "from ..web import control_api\n"
        )
        self.assertEqual(violations(source, "headscale_tw.control.x"), [
            "headscale_tw.control.x:1 imports socket",
            "headscale_tw.control.x:2 imports twisted.internet.reactor",
            "headscale_tw.control.x:4 imports headscale_tw.storage.stores.nodes",
            "headscale_tw.control.x:4 imports headscale_tw.storage.stores.nodes.NodeStore",
            "headscale_tw.control.x:6 imports twisted.web.resource",
            "headscale_tw.control.x:6 imports twisted.web.resource.Resource",
            "headscale_tw.control.x:7 imports headscale_tw.web",
            "headscale_tw.control.x:7 imports headscale_tw.web.control_api",
        ])
