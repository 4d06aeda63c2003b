"""
Guard for :mod:`headscale_tw._twisted_private`: every private Twisted name it
relies on still exists in the installed Twisted, with the signature it relies
on; nothing else under ``src/`` uses private Twisted API; and the module uses
no private name it does not list.

One test per listed name, named after it (``test_H2Connection__sendPrioritisedData``),
so a Twisted upgrade that changes one fails by name.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

from twisted.trial import unittest

from headscale_tw import _twisted_private
from headscale_tw._twisted_private import PRIVATE_USES, PrivateUse

_SRC = Path(_twisted_private.__file__).resolve().parent
_MODULE = Path(_twisted_private.__file__).resolve()


def _resolve(owner: str):
    """The module or class named by a dotted ``owner``."""
    parts = owner.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(owner)


def _sets_instance_attribute(cls: type, name: str) -> bool:
    """Whether some class in ``cls``'s MRO assigns ``self.<name>`` in its code."""
    pattern = re.compile(r"\bself\." + re.escape(name) + r"\s*(?::[^=\n]*)?=[^=]")
    for klass in inspect.getmro(cls):
        if klass is object:
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if pattern.search(source):
            return True
    return False


def _parameters(function) -> str:
    """``function``'s signature without annotations: the names and kinds of its parameters."""
    signature = inspect.signature(function)
    bare = [parameter.replace(annotation=inspect.Parameter.empty) for parameter in signature.parameters.values()]
    return str(signature.replace(parameters=bare, return_annotation=inspect.Signature.empty))


def _check(testcase: unittest.TestCase, use: PrivateUse) -> None:
    try:
        owner = _resolve(use.owner)
    except (ImportError, AttributeError) as e:
        testcase.fail(f"Twisted no longer has {use.owner} (needed for {use.name}: {use.reason}): {e}")
    if use.source_mentions is not None:
        source = inspect.getsource(owner)
        testcase.assertIn(use.source_mentions, source,
                          f"Twisted's {use.owner} no longer uses {use.name!r} as headscale-tw relies on ({use.reason})")
        return
    found = hasattr(owner, use.name) or (isinstance(owner, type) and _sets_instance_attribute(owner, use.name))
    if not found:
        testcase.fail(f"Twisted no longer has {use.owner}.{use.name} ({use.reason})")
    if use.signature is not None:
        actual = _parameters(getattr(owner, use.name))
        testcase.assertEqual(
            actual, use.signature, f"Twisted changed the signature of {use.owner}.{use.name} ({use.reason})"
        )


def _make_test(use: PrivateUse):
    def test(self) -> None:
        _check(self, use)

    test.__doc__ = f"{use.owner}.{use.name} exists as headscale-tw uses it: {use.reason}."
    return test


class PrivateTwistedNamesTests(unittest.TestCase):
    """Each private Twisted name in ``PRIVATE_USES`` is still there (tests are added below, one per name)."""


for _use in PRIVATE_USES:
    _name = f"test_{_use.owner.rsplit('.', 1)[-1]}_{_use.name}"
    assert not hasattr(PrivateTwistedNamesTests, _name), _name
    setattr(PrivateTwistedNamesTests, _name, _make_test(_use))


class ConfinementTests(unittest.TestCase):
    """Private Twisted API is used in ``_twisted_private`` only, and everything it uses is listed."""

    def test_no_private_twisted_imports_elsewhere(self):
        """No module under src/ but _twisted_private names a private Twisted module (``twisted.x._y``)."""
        private_module = re.compile(r"twisted\.[a-z_.]*\._")
        offenders = []
        for path in sorted(_SRC.rglob("*.py")):
            if path == _MODULE:
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if private_module.search(line) and not line.lstrip().startswith("#"):
                    offenders.append(f"{path.relative_to(_SRC)}:{number}: {line.strip()}")
        self.assertEqual(offenders, [])

    def _code_names(self) -> tuple[set[str], set[str]]:
        """(private names the module uses, every name or string in its code), the list itself left out."""
        tree = ast.parse(_MODULE.read_text(encoding="utf-8"))
        tree.body = [
            node for node in tree.body
            if not (isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "PRIVATE_USES")
        ]
        private, names = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
                if node.attr.startswith("_") and not node.attr.startswith("__"):
                    private.add(node.attr)
            elif isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)
            elif isinstance(node, ast.ImportFrom):
                names.update(alias.name for alias in node.names)
                if node.module and "._" in node.module:
                    private.update(alias.name for alias in node.names)
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", "") in ("getattr", "hasattr", "setattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and str(node.args[1].value).startswith("_")
            ):
                private.add(node.args[1].value)
        return private, names

    def test_every_private_attribute_is_listed(self):
        """Every ``._name`` (or ``getattr(x, "_name")``) the module uses, and every name it imports from a private module, is listed."""
        private, _ = self._code_names()
        listed = {use.name for use in PRIVATE_USES}
        self.assertEqual(sorted(private - listed), [])

    def test_listed_entries_are_used(self):
        """The list names nothing the module no longer uses (a stale entry would pin Twisted for nothing)."""
        _, names = self._code_names()
        stale = [f"{use.owner}.{use.name}" for use in PRIVATE_USES if use.name not in names]
        self.assertEqual(stale, [])


class DaemonStatusProtocolTests(unittest.TestCase):
    """The status-pipe protocol ``report_daemon_status`` speaks is still the one twistd's parent reads."""

    def test_parent_reads_zero_as_started(self):
        """twistd's waiting parent reads at most 100 bytes and treats exactly b"0" as a successful start."""
        from twisted.scripts._twistd_unix import UnixApplicationRunner

        source = inspect.getsource(UnixApplicationRunner._waitForStart)
        self.assertIn("os.read, readPipe, 100", source)
        self.assertIn('data != b"0"', source)
        self.assertEqual(_twisted_private.DAEMON_STATUS_LIMIT, 100)

    def test_daemonize_sets_the_key(self):
        """twistd keeps the pipe's write end under the key the service claims."""
        from twisted.scripts._twistd_unix import UnixApplicationRunner

        source = inspect.getsource(UnixApplicationRunner.setupEnvironment)
        self.assertIn(f'self.config["{_twisted_private.DAEMON_STATUS_KEY}"] = self.daemonize', source)


class CompactSettingsTests(unittest.TestCase):
    """HTTP/2 settings are kept in short lists, not in a ~760-byte deque each."""

    def test_connection_settings_compact(self):
        """A new connection's local and remote settings hold no deque."""
        from collections import deque

        from twisted.internet.task import Clock

        from headscale_tw._twisted_private import BatchingH2Connection, SettingValues

        connection = BatchingH2Connection(Clock())
        for settings in (connection.conn.local_settings, connection.conn.remote_settings):
            values = list(settings._settings.values())
            self.assertTrue(values)
            self.assertFalse([v for v in values if isinstance(v, deque)])
            self.assertTrue(all(isinstance(v, SettingValues) for v in values))

    def test_acknowledge_still_applies_new_value(self):
        """A changed setting is pending until acknowledged, then current, as with h2's deques."""
        from h2.settings import SettingCodes, Settings

        from headscale_tw._twisted_private import compact_settings

        settings = Settings(client=False)
        compact_settings(settings)
        settings[SettingCodes.INITIAL_WINDOW_SIZE] = 1000
        self.assertEqual(settings.initial_window_size, 65535)
        changed = settings.acknowledge()
        self.assertEqual(changed[SettingCodes.INITIAL_WINDOW_SIZE].new_value, 1000)
        self.assertEqual(settings.initial_window_size, 1000)
