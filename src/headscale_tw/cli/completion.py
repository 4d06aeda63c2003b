# -*- test-case-name: tests.cli.test_completion -*-
"""
``headscale completion bash|zsh|fish`` and ``headscale help [COMMAND...]``.

The completion scripts are generated from the argparse tree that
:func:`~headscale_tw.cli.main.build_parser` builds, so they always offer the
commands and flags the CLI really has::

    source <(headscale completion bash)
    headscale completion zsh > "${fpath[1]}/_headscale"
    headscale completion fish > ~/.config/fish/completions/headscale.fish

Every script has the same three parts, written in each shell's syntax:

* ``child PATH WORD``: the canonical name of subcommand ``WORD`` (or one of
  its aliases) under the command ``PATH`` (``"nodes list"``; ``""`` is the
  root), or nothing;
* ``takes_value PATH OPTION``: whether ``OPTION`` reads the next word;
* a walk over the words typed so far that skips option values and follows
  ``child`` to find the command being completed; then the candidates of that
  command (its subcommands and flags), or, right after a flag that takes a
  value, its choices (``-o``: ``json json-line yaml``) or file names
  (``-c``, ``-f``).

Only canonical names are offered; aliases (``node``, ``ls``) are followed when
typed.

argparse has no public way to walk a parser, so :func:`command_tree` reads
``parser._actions``, ``argparse._SubParsersAction`` and its ``choices`` and
``_choices_actions`` (unchanged since Python 3.2); ``tests/cli/test_completion.py``
checks the tree it builds and fails if they change.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from headscale_tw.cli._client import CLIError

if TYPE_CHECKING:
    from headscale_tw.cli.main import Context

__all__ = ["SHELLS", "CommandInfo", "OptionInfo", "command_tree", "script", "add_commands"]

SHELLS = ("bash", "zsh", "fish")

#: Flags whose value is a file name.
_FILE_DESTS = frozenset({"config", "file"})
#: What names and choices may contain, so that they need no quoting in any of the shells.
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*|-{1,2}[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class OptionInfo:
    """One flag of a command."""

    names: tuple[str, ...]
    takes_value: bool
    choices: tuple[str, ...] = ()
    files: bool = False
    help: str = ""


@dataclass
class CommandInfo:
    """One command: its path from the root, its subcommands (canonical name → aliases) and flags."""

    path: tuple[str, ...]
    help: str = ""
    children: dict[str, tuple[str, ...]] = field(default_factory=dict)
    child_help: dict[str, str] = field(default_factory=dict)
    options: list[OptionInfo] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The path as the scripts spell it: names joined by one space."""
        return " ".join(self.path)


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _checked(word: str) -> str:
    if not _WORD.fullmatch(word):
        raise ValueError(f"completion: {word!r} cannot be used in a completion script")
    return word


def command_tree(root: argparse.ArgumentParser) -> list[CommandInfo]:
    """Every command of ``root``, depth first, the root first."""
    return list(_walk(root, (), ""))


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...], help: str) -> Iterator[CommandInfo]:
    info = CommandInfo(path=path, help=help)
    for action in parser._actions:
        if action.option_strings and action.help != argparse.SUPPRESS:
            info.options.append(OptionInfo(
                names=tuple(_checked(n) for n in action.option_strings),
                takes_value=action.nargs != 0,
                choices=tuple(_checked(str(c)) for c in action.choices or ()),
                files=action.dest in _FILE_DESTS,
                help=action.help or "",
            ))
    subs = _subparsers(parser)
    nested: list[tuple[str, argparse.ArgumentParser]] = []
    if subs is not None:
        helps = {a.dest: a.help or "" for a in subs._choices_actions}
        names_of: dict[int, list[str]] = {}
        parsers: dict[int, argparse.ArgumentParser] = {}
        for name, child in subs.choices.items():  # the canonical name comes before its aliases
            names_of.setdefault(id(child), []).append(_checked(name))
            parsers[id(child)] = child
        for key, names in names_of.items():
            info.children[names[0]] = tuple(names[1:])
            info.child_help[names[0]] = helps.get(names[0], "")
            nested.append((names[0], parsers[key]))
    yield info
    for name, child in nested:
        yield from _walk(child, path + (name,), info.child_help[name])


# ---------------------------------------------------------------- bash and zsh (shared POSIX-ish parts)


def _case_labels(path: str, words: tuple[str, ...]) -> str:
    return "|".join(f'"{path}|{w}"' for w in words)


def _sh_functions(tree: list[CommandInfo]) -> str:
    child_cases, value_cases, choice_cases, word_cases = [], [], [], []
    for cmd in tree:
        for name, aliases in cmd.children.items():
            child_cases.append(f"        {_case_labels(cmd.key, (name, *aliases))}) echo {name} ;;")
        valued = [n for o in cmd.options if o.takes_value for n in o.names]
        if valued:
            value_cases.append(f"        {_case_labels(cmd.key, tuple(valued))}) return 0 ;;")
        for option in cmd.options:
            if option.files:
                choice_cases.append(f"        {_case_labels(cmd.key, option.names)}) return 2 ;;")
            elif option.choices:
                choice_cases.append(f"        {_case_labels(cmd.key, option.names)}) "
                                    f"echo \"{' '.join(option.choices)}\" ;;")
        words = list(cmd.children) + [n for o in cmd.options for n in o.names]
        if cmd.path == ("help",):
            words = list(tree[0].children)
        word_cases.append(f'        "{cmd.key}") echo "{" ".join(words)}" ;;')
    return "\n".join([
        "# The subcommand WORD names under PATH (aliases followed), or nothing.",
        "_headscale_child() {",
        '    case "$1|$2" in',
        *child_cases,
        "    esac",
        "}",
        "",
        "# Whether OPTION of PATH reads the next word.",
        "_headscale_takes_value() {",
        '    case "$1|$2" in',
        *value_cases,
        "    esac",
        "    return 1",
        "}",
        "",
        "# The values OPTION of PATH accepts; status 2 for file names.",
        "_headscale_values() {",
        '    case "$1|$2" in',
        *choice_cases,
        "    esac",
        "    return 0",
        "}",
        "",
        "# The subcommands and flags of PATH.",
        "_headscale_words() {",
        '    case "$1" in',
        *word_cases,
        "    esac",
        "}",
        "",
        "# The command the words typed so far lead to (canonical names, space-separated).",
        "_headscale_path() {",
        '    local hs_path="" hs_skip=0 hs_word hs_child',
        '    for hs_word in "$@"; do',
        '        if [ "$hs_skip" = 1 ]; then hs_skip=0; continue; fi',
        '        case "$hs_word" in',
        "            --*=*) continue ;;",
        '            -*) if _headscale_takes_value "$hs_path" "$hs_word"; then hs_skip=1; fi; continue ;;',
        "        esac",
        '        hs_child=$(_headscale_child "$hs_path" "$hs_word")',
        '        if [ -n "$hs_child" ]; then hs_path="${hs_path:+$hs_path }$hs_child"; fi',
        "    done",
        "    printf '%s\\n' \"$hs_path\"",
        "}",
    ])


def _bash(tree: list[CommandInfo]) -> str:
    return "\n".join([
        "# bash completion for headscale (headscale-tw), generated by `headscale completion bash`.",
        "# Load it with: source <(headscale completion bash)",
        "",
        _sh_functions(tree),
        "",
        "_headscale() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev hs_path hs_values hs_status',
        '    hs_path=$(_headscale_path "${COMP_WORDS[@]:1:COMP_CWORD-1}")',
        '    if [ "$COMP_CWORD" -gt 1 ]; then',
        '        prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '        if _headscale_takes_value "$hs_path" "$prev"; then',
        '            hs_values=$(_headscale_values "$hs_path" "$prev")',
        "            hs_status=$?",
        '            if [ "$hs_status" = 2 ]; then',
        '                COMPREPLY=($(compgen -f -- "$cur"))',
        "            else",
        '                COMPREPLY=($(compgen -W "$hs_values" -- "$cur"))',
        "            fi",
        "            return 0",
        "        fi",
        "    fi",
        '    COMPREPLY=($(compgen -W "$(_headscale_words "$hs_path")" -- "$cur"))',
        "}",
        "",
        "complete -F _headscale headscale",
        "",
    ])


def _zsh(tree: list[CommandInfo]) -> str:
    return "\n".join([
        "#compdef headscale",
        "# zsh completion for headscale (headscale-tw), generated by `headscale completion zsh`.",
        '# Install it as _headscale in a directory of $fpath, or: source <(headscale completion zsh)',
        "",
        _sh_functions(tree),
        "",
        "_headscale() {",
        "    local hs_path hs_prev hs_values hs_status",
        '    hs_path=$(_headscale_path "${(@)words[2,CURRENT-1]}")',
        '    hs_prev="${words[CURRENT-1]}"',
        '    if (( CURRENT > 2 )) && _headscale_takes_value "$hs_path" "$hs_prev"; then',
        '        hs_values=$(_headscale_values "$hs_path" "$hs_prev")',
        "        hs_status=$?",
        '        if [ "$hs_status" = 2 ]; then',
        "            _files",
        "        else",
        "            compadd -- ${=hs_values}",
        "        fi",
        "        return",
        "    fi",
        '    compadd -- ${=$(_headscale_words "$hs_path")}',
        "}",
        "",
        'if [ "$funcstack[1]" = "_headscale" ]; then',
        '    _headscale "$@"',
        "else",
        "    compdef _headscale headscale",
        "fi",
        "",
    ])


# ---------------------------------------------------------------- fish


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish(tree: list[CommandInfo]) -> str:
    child_cases, value_cases, lines = [], [], []
    for cmd in tree:
        at = _fish_quote(f"__headscale_at {_fish_quote(cmd.key)}")
        for name, aliases in cmd.children.items():
            labels = " ".join(_fish_quote(f"{cmd.key}|{w}") for w in (name, *aliases))
            child_cases += [f"        case {labels}", f"            echo {name}"]
            lines.append(f"complete -c headscale -n {at} -a {name} -d {_fish_quote(cmd.child_help[name])}")
        if cmd.path == ("help",):
            lines.append(f"complete -c headscale -n {at} -a {_fish_quote(' '.join(tree[0].children))}")
        valued = [n for o in cmd.options if o.takes_value for n in o.names]
        if valued:
            labels = " ".join(_fish_quote(f"{cmd.key}|{n}") for n in valued)
            value_cases += [f"        case {labels}", "            return 0"]
        for option in cmd.options:
            spec = []
            for name in option.names:
                spec.append(f"-l {name[2:]}" if name.startswith("--") else f"-s {name[1:]}")
            if option.files:
                spec.append("-r -F")
            elif option.choices:
                spec.append(f"-x -a {_fish_quote(' '.join(option.choices))}")
            elif option.takes_value:
                spec.append("-x")
            if option.help:
                spec.append(f"-d {_fish_quote(option.help)}")
            lines.append(f"complete -c headscale -n {at} " + " ".join(spec))
    return "\n".join([
        "# fish completion for headscale (headscale-tw), generated by `headscale completion fish`.",
        "# Install it with: headscale completion fish > ~/.config/fish/completions/headscale.fish",
        "",
        "function __headscale_child --description 'the subcommand a word names under a command'",
        '    switch "$argv[1]|$argv[2]"',
        *child_cases,
        "    end",
        "end",
        "",
        "function __headscale_takes_value --description 'whether a flag reads the next word'",
        '    switch "$argv[1]|$argv[2]"',
        *value_cases,
        "    end",
        "    return 1",
        "end",
        "",
        "function __headscale_path --description 'the command the words typed so far lead to'",
        "    set -l words (commandline -opc)",
        "    set -e words[1]",
        "    set -l hs_path ''",
        "    set -l skip 0",
        "    for word in $words",
        "        if test $skip = 1",
        "            set skip 0",
        "            continue",
        "        end",
        "        if string match -q -- '--*=*' $word",
        "            continue",
        "        end",
        "        if string match -q -- '-*' $word",
        '            if __headscale_takes_value "$hs_path" $word',
        "                set skip 1",
        "            end",
        "            continue",
        "        end",
        '        set -l child (__headscale_child "$hs_path" $word)',
        '        if test -n "$child"',
        '            if test -n "$hs_path"',
        '                set hs_path "$hs_path $child"',
        "            else",
        "                set hs_path $child",
        "            end",
        "        end",
        "    end",
        '    echo "$hs_path"',
        "end",
        "",
        "function __headscale_at --description 'whether the words typed so far lead to this command'",
        "    set -l current (__headscale_path)",
        '    test "$current" = "$argv[1]"',
        "end",
        "",
        "complete -c headscale -f",
        *lines,
        "",
    ])


_GENERATORS = {"bash": _bash, "zsh": _zsh, "fish": _fish}


def script(root: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell`` (one of :data:`SHELLS`) of the command tree ``root``."""
    return _GENERATORS[shell](command_tree(root))


# ---------------------------------------------------------------- commands


def cmd_completion(root: argparse.ArgumentParser, ctx: Context) -> None:
    """Print the script; it is code, so ``-o`` does not change it."""
    ctx.out.stdout.write(script(root, ctx.args.shell))


def cmd_help(root: argparse.ArgumentParser, ctx: Context) -> None:
    """Print the help of the command named by the words given (the root's without any)."""
    parser = root
    seen = [root.prog]
    for word in ctx.args.topic or ():
        subs = _subparsers(parser)
        child = subs.choices.get(word) if subs is not None else None
        if child is None:
            raise CLIError(f'unknown help topic "{" ".join(seen[1:] + [word])}" (see \'headscale help\')')
        parser = child
        seen.append(word)
    ctx.out.stdout.write(parser.format_help())


def add_commands(sub: Any, cmd: Any, root: argparse.ArgumentParser) -> None:
    """Add ``completion`` and ``help`` under ``sub`` (the root's subcommands)."""
    p = cmd(sub, "completion", partial(cmd_completion, root), "print a shell completion script (bash, zsh, fish)")
    p.add_argument("shell", choices=SHELLS, help="the shell to complete for")
    p = cmd(sub, "help", partial(cmd_help, root), "help about any command")
    p.add_argument("topic", nargs="*", metavar="COMMAND", help="the command to explain, such as: nodes list")
