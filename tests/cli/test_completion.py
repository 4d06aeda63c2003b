# -*- test-case-name: tests.cli.test_completion -*-
"""
``headscale completion bash|zsh|fish`` run in the real shells, and ``headscale help``.

The shells are Debian's (``tools/ensure-test-services.d/60-shells.sh`` installs
zsh and fish); a missing shell fails the test, naming that step.
"""

import io
import os
import shutil
import subprocess

from twisted.trial import unittest

from headscale_tw.cli.completion import command_tree
from headscale_tw.cli.main import build_parser, main

__all__ = ["CompletionTreeTests", "BashCompletionTests", "ZshCompletionTests", "FishCompletionTests",
           "HelpCommandTests"]

#: Seconds a shell may take to parse or run a completion script.
SHELL_TIMEOUT = 60


def _cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), environ={}, stdin=io.StringIO(""), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


class _ShellMixin:
    """Writes the script for ``shell`` to a file and runs snippets against it (mixed into a TestCase)."""

    shell = ""

    def setUp(self):
        self.binary = shutil.which(self.shell)
        if self.binary is None:
            self.fail(f"{self.shell} is not installed: run tools/ensure-test-services.d/60-shells.sh")
        code, out, err = _cli("completion", self.shell)
        self.assertEqual((code, err), (0, ""))
        self.script = self.mktemp()
        with open(self.script, "w", encoding="utf-8") as f:
            f.write(out)

    def run_shell(self, *args, stdin=""):
        """Run the shell with ``args``; return its stdout, failing on a non-zero status."""
        done = subprocess.run([self.binary, *args], input=stdin, capture_output=True, text=True,
                              timeout=SHELL_TIMEOUT, check=False)
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout

    def test_parses(self):
        """The shell's own parser (-n) accepts the script."""
        self.run_shell("-n", self.script)


class CompletionTreeTests(unittest.TestCase):
    """The tree the scripts are generated from."""

    def test_every_command_is_present(self):
        """Every Headscale command this CLI has, the new ones included, is in the tree with its aliases."""
        tree = {c.key: c for c in command_tree(build_parser())}
        for key in ("nodes backfillips", "debug create-node", "auth approve", "auth reject", "completion", "help",
                    "policy check", "apikeys expire"):
            self.assertIn(key, tree)
        self.assertEqual(tree[""].children["nodes"], ("node",))
        options = {n: o for o in tree["debug create-node"].options for n in o.names}
        self.assertTrue(options["--key"].takes_value)
        self.assertEqual(options["-o"].choices, ("json", "json-line", "yaml"))
        self.assertTrue(options["-c"].files)
        self.assertFalse(options["--force"].takes_value)

    def test_unknown_shell(self):
        """An unsupported shell is a one-line usage error."""
        code, out, err = _cli("completion", "tcsh")
        self.assertEqual((code, out), (1, ""))
        self.assertIn("invalid choice: 'tcsh'", err)


class BashCompletionTests(_ShellMixin, unittest.TestCase):
    """The bash script, driven through its completion function as bash would."""

    shell = "bash"

    def complete(self, *words):
        """The candidates bash would offer after ``words`` (the last one being completed)."""
        quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
        snippet = (f'source "{self.script}"\n'
                   f"COMP_WORDS=(headscale {quoted}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))\n"
                   "COMPREPLY=(); _headscale; printf '%s\\n' \"${COMPREPLY[@]}\"\n")
        return [w for w in self.run_shell("--norc", "--noprofile", "-c", snippet).splitlines() if w]

    def test_commands(self):
        """The root offers the commands; a prefix narrows them."""
        self.assertIn("backfillips", self.complete("nodes", ""))
        self.assertEqual(self.complete("deb"), ["debug"])
        self.assertEqual(self.complete("comp"), ["completion"])

    def test_aliases_and_global_flags(self):
        """An alias is followed and a global flag's value is skipped."""
        self.assertEqual(self.complete("-c", "/etc/headscale.yaml", "node", "backf"), ["backfillips"])

    def test_flags_and_values(self):
        """A command's flags are offered, and -o's choices after -o."""
        self.assertEqual(sorted(self.complete("debug", "create-node", "--r")), ["--route"])
        self.assertEqual(self.complete("nodes", "list", "-o", ""), ["json", "json-line", "yaml"])

    def test_file_values(self):
        """After -f, file names are offered."""
        directory = self.mktemp()
        os.makedirs(directory)
        open(os.path.join(directory, "policy.hujson"), "w").close()
        self.assertEqual(self.complete("policy", "set", "-f", os.path.join(directory, "pol")),
                         [os.path.join(directory, "policy.hujson")])


class ZshCompletionTests(_ShellMixin, unittest.TestCase):
    """The zsh script: its functions run in zsh, with compadd recording what it is given."""

    shell = "zsh"

    def complete(self, *words):
        """What ``_headscale`` hands to ``compadd`` after ``words`` (the last one being completed)."""
        quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
        snippet = ("compdef() { :; }\n"
                   "compadd() { [ \"$1\" = -- ] && shift; print -rl -- \"$@\"; }\n"
                   "_files() { print -r -- FILES; }\n"
                   f'source "{self.script}"\n'
                   f"words=(headscale {quoted}); CURRENT=${{#words}}\n"
                   "_headscale\n")
        return [w for w in self.run_shell("-f", "-c", snippet).splitlines() if w]

    def test_commands_and_aliases(self):
        """Subcommands under an alias, and flags, are offered."""
        offered = self.complete("node", "")
        self.assertIn("backfillips", offered)
        self.assertIn("--output", offered)

    def test_values(self):
        """-o offers its choices and -c file names."""
        self.assertEqual(self.complete("nodes", "list", "-o", ""), ["json", "json-line", "yaml"])
        self.assertEqual(self.complete("-c", ""), ["FILES"])


class FishCompletionTests(_ShellMixin, unittest.TestCase):
    """The fish script, asked through fish's own ``complete -C``."""

    shell = "fish"

    def complete(self, line):
        """The candidates fish offers for the command line ``line``."""
        snippet = f"source '{self.script}'\ncomplete -C '{line}'\n"
        return [w.split("\t")[0] for w in self.run_shell("--no-config", "-c", snippet).splitlines() if w]

    def test_commands(self):
        """Subcommands of a group are offered, under its alias too."""
        self.assertIn("backfillips", self.complete("headscale node "))
        self.assertEqual(self.complete("headscale deb"), ["debug"])

    def test_flags_and_values(self):
        """A command's flags, and -o's choices after a skipped -c value."""
        self.assertIn("--route", self.complete("headscale debug create-node --r"))
        self.assertEqual(self.complete("headscale -c /x nodes list -o "), ["json", "json-line", "yaml"])


class HelpCommandTests(unittest.TestCase):
    """headscale help [COMMAND...]."""

    def test_root(self):
        """Without words it prints the root help listing the commands."""
        code, out, _ = _cli("help")
        self.assertEqual(code, 0)
        self.assertIn("usage: headscale", out)
        self.assertIn("completion", out)

    def test_nested_and_alias(self):
        """help node backfillips prints that command's help (aliases work)."""
        code, out, _ = _cli("help", "node", "backfillips")
        self.assertEqual(code, 0)
        self.assertIn("usage: headscale nodes backfillips", out)

    def test_unknown(self):
        """An unknown topic is a one-line error naming it."""
        code, out, err = _cli("help", "nodes", "frobnicate")
        self.assertEqual((code, out, err), (1, "", 'Error: unknown help topic "nodes frobnicate" '
                                                   "(see 'headscale help')\n"))
