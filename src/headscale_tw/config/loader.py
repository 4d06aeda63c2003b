# -*- test-case-name: tests.config.test_loader -*-
"""
Reading Headscale's YAML into :class:`~headscale_tw.config.model.Config`.

``parse_config`` takes a mapping or YAML text (tests build configs inline) and
optional environment overrides; ``load_config`` finds and reads the file
(search order: the ``path`` argument, ``HEADSCALE_CONFIG``, ``./config.yaml``,
``~/.headscale/config.yaml``, ``/etc/headscale/config.yaml``; none found =
embedded defaults) and applies ``HEADSCALE_*`` environment overrides.

Pipeline: YAML → flat ``{dotted key: raw value}`` (aliases resolved, unknown
keys warned about) → environment overrides → values converted by the key's
kind (:mod:`._schema`) → frozen ``Config`` → cross-field checks, one module
per section (:mod:`.checks`). Every
problem found is collected; :class:`ConfigError` lists them all, each line
naming the key.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping, MutableSequence, Sequence
from dataclasses import replace
from typing import Any

import yaml
from twisted.logger import Logger

from headscale_tw.config._durations import DurationError, _q, parse_duration
from headscale_tw.config._schema import ALIASES, BY_NAME, ENV_NAMES, IGNORED, REMOVED, SECTIONS, Key
from headscale_tw.config.checks import check_config
from headscale_tw.config.model import Config, ExtraRecord

__all__ = [
    "ConfigError",
    "parse_config",
    "parse_config_with_warnings",
    "load_config",
    "find_config_file",
    "DEFAULT_SEARCH_PATHS",
]

log = Logger(namespace="headscale_tw.config")

# After the explicit path and HEADSCALE_CONFIG; "~" is expanded with $HOME of
# the environment passed to load_config.
DEFAULT_SEARCH_PATHS: tuple[str, ...] = (
    "config.yaml",
    "~/.headscale/config.yaml",
    "/etc/headscale/config.yaml",
)

_PG_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_TRUE = ("1", "true", "yes", "on", "t", "y")
_FALSE = ("0", "false", "no", "off", "f", "n", "")


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and the problem.

    ``problems`` holds one line per problem (``str(error)`` joins them).
    """

    def __init__(self, problems: str | Sequence[str]):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class _Bad(Exception):
    """One value is wrong; the text says how (the caller adds the key)."""


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


# ---------------------------------------------------------------- YAML reading


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps ``0770``-style numbers as text.

    PyYAML follows YAML 1.1 and reads ``0770`` as octal 504, while Headscale
    (YAML 1.2) reads decimal 770 and then parses its text as octal. Keeping
    the text lets ``unix_socket_permission: 0770`` mean the same in both.
    """


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    text = loader.construct_scalar(node)
    if isinstance(text, str) and re.fullmatch(r"0[0-7_]+", text):
        return text
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _read_yaml(text: str, origin: str) -> dict:
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{origin}:{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{origin}: the top level must be a mapping of keys, got {_describe(data)}")
    return dict(data)


# ------------------------------------------------------- flattening + aliases


class _Collector:
    """Accumulates raw values, their origin, warnings and problems."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.origin: dict[str, str] = {}
        self.aliased: dict[str, tuple[str, Any]] = {}
        self.warnings: list[str] = []
        self.problems: list[str] = []

    def label(self, key: str) -> str:
        origin = self.origin.get(key)
        return f"{key} (from {origin})" if origin else key

    def problem(self, key: str, text: str) -> None:
        self.problems.append(f"{self.label(key)}: {text}")

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def given(self, key: str) -> bool:
        return key in self.values


def _flatten(data: Mapping, prefix: str, out: _Collector) -> None:
    for raw_key, value in data.items():
        if not isinstance(raw_key, str):
            out.problems.append(f"{prefix or '(top level)'}: key {_q(raw_key)} is not a string")
            continue
        key = f"{prefix}{raw_key}"
        if key in REMOVED:
            out.problems.append(f"{key}: {REMOVED[key]}")
        elif key in BY_NAME:
            out.values[key] = value
        elif key in ALIASES:
            out.aliased[ALIASES[key]] = (key, value)
        elif key == "ip_prefixes":
            _alias_ip_prefixes(value, out)
        elif key in IGNORED:
            out.warnings.append(f"{key} is accepted but ignored: {IGNORED[key]}")
        elif key.startswith("tuning."):
            out.warnings.append(f"{key} is accepted but ignored: only tuning.batch_change_delay applies to headscale-tw")
        elif key in ("dns.nameservers", "dns_config.nameservers") and isinstance(value, list):
            # Old shape: a plain list of global resolvers.
            out.aliased["dns.nameservers.global"] = (key, value)
        elif key in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, Mapping):
                out.problems.append(f"{key}: expected a mapping of keys, got {_describe(value)}")
                continue
            _flatten(value, key + ".", out)
        else:
            out.warnings.append(f"{key}: unknown key, ignored")


def _alias_ip_prefixes(value: Any, out: _Collector) -> None:
    if not isinstance(value, list):
        out.problems.append(f"ip_prefixes: expected a list of prefixes, got {_describe(value)}")
        return
    seen = set()
    for item in value:
        try:
            net = ipaddress.ip_network(str(item), strict=False)
        except ValueError:
            out.problems.append(f"ip_prefixes: {_q(str(item))} is not a valid prefix")
            continue
        target = f"prefixes.v{net.version}"
        if target not in seen:
            seen.add(target)
            out.aliased[target] = ("ip_prefixes", str(item))


def _apply_aliases(out: _Collector) -> None:
    for new, (old, value) in out.aliased.items():
        if new in out.values:
            out.warnings.append(f"{old} is deprecated and ignored because {new} is also set")
        else:
            out.warnings.append(f"{old} is deprecated, use {new} instead")
            out.values[new] = value
            out.origin.setdefault(new, old)


def _apply_environ(environ: Mapping[str, str], out: _Collector) -> None:
    for var in sorted(environ):
        if not var.startswith("HEADSCALE_") or var == "HEADSCALE_CONFIG":
            continue
        name = ENV_NAMES.get(var[len("HEADSCALE_"):])
        if name is None:
            continue  # e.g. HEADSCALE_CLI_* for other tools; not ours to judge
        if name in ALIASES:
            out.warnings.append(f"{var} is deprecated, use HEADSCALE_{ALIASES[name].replace('.', '_').upper()}")
            name = ALIASES[name]
        out.values[name] = _EnvText(environ[var])
        out.origin[name] = var


class _EnvText(str):
    """A value that came from the environment: always text, parsed by kind."""


# ---------------------------------------------------------------- conversion


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool) or value is None:
        raise _Bad(f"expected a string, got {_describe(value)}")
    if isinstance(value, (int, float)):
        return str(value)
    raise _Bad(f"expected a string, got {_describe(value)}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _Bad(f"expected true or false, got {_q(value)}" if isinstance(value, str) else
               f"expected true or false, got {_describe(value)}")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise _Bad(f"expected a whole number, got {_describe(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise _Bad(f"expected a whole number, got {_q(value)}" if isinstance(value, str) else
               f"expected a whole number, got {_describe(value)}")


def _to_duration(value: Any) -> float:
    try:
        seconds = parse_duration(value)
    except DurationError as e:
        raise _Bad(str(e)) from None
    if seconds < 0:
        raise _Bad(f"negative duration {_q(value)} is not allowed")
    return seconds


def _to_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        text = value.strip()
        if isinstance(value, _EnvText) and text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                value = yaml.load(text, Loader=_Loader)
        else:
            return tuple(p for p in re.split(r"[,\s]+", text) if p)
    if isinstance(value, (list, tuple)):
        items = []
        for i, item in enumerate(value):
            if isinstance(item, (Mapping, list, tuple)) or item is None or isinstance(item, bool):
                raise _Bad(f"item {i} should be a string, got {_describe(item)}")
            items.append(str(item))
        return tuple(items)
    raise _Bad(f"expected a list of strings, got {_describe(value)}")


def _env_structure(value: Any) -> Any:
    if isinstance(value, _EnvText):
        text = value.strip()
        if not text:
            return {}
        try:
            return yaml.load(text, Loader=_Loader)
        except yaml.YAMLError:
            raise _Bad("expected JSON or YAML text") from None
    return value


def _to_split(value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    value = _env_structure(value)
    if not isinstance(value, Mapping):
        raise _Bad(f"expected a mapping of domain to resolvers, got {_describe(value)}")
    routes = []
    for domain, servers in value.items():
        if servers is None:
            servers = []
        try:
            routes.append((str(domain), _to_list(servers)))
        except _Bad as e:
            raise _Bad(f"{domain}: {e}") from None
    return tuple(routes)


def _to_map(value: Any) -> tuple[tuple[str, str], ...]:
    value = _env_structure(value)
    if not isinstance(value, Mapping):
        raise _Bad(f"expected a mapping of strings, got {_describe(value)}")
    pairs = []
    for k, v in value.items():
        if isinstance(v, (Mapping, list)) or v is None:
            raise _Bad(f"{k}: expected a string, got {_describe(v)}")
        pairs.append((str(k), str(v).lower() if isinstance(v, bool) else str(v)))
    return tuple(pairs)


def _to_records(value: Any) -> tuple[ExtraRecord, ...]:
    value = _env_structure(value)
    if isinstance(value, Mapping) and not value:
        value = []
    if not isinstance(value, (list, tuple)):
        raise _Bad(f"expected a list of records, got {_describe(value)}")
    records = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise _Bad(f"record {i} should be a mapping with name, type and value")
        fields = {}
        for field_name in ("name", "type", "value"):
            v = item.get(field_name)
            if not isinstance(v, str) or not v:
                raise _Bad(f"record {i} needs a non-empty string {_q(field_name)}")
            fields[field_name] = v
        extra = set(item) - {"name", "type", "value"}
        if extra:
            raise _Bad(f"record {i} has unknown fields {', '.join(sorted(map(str, extra)))}")
        records.append(ExtraRecord(**fields))
    return tuple(records)


def _to_mode(value: Any) -> int:
    if isinstance(value, bool):
        raise _Bad(f"expected an octal mode such as \"0770\", got {_describe(value)}")
    text = str(value).strip().lower() if isinstance(value, (int, str)) else None
    if text is None:
        raise _Bad(f"expected an octal mode such as \"0770\", got {_describe(value)}")
    digits = text[2:] if text.startswith("0o") else text
    if not re.fullmatch(r"[0-7]{1,4}", digits.replace("_", "")):
        raise _Bad(f"{_q(value)} is not an octal file mode such as \"0770\"")
    return int(digits.replace("_", ""), 8)


def _to_opt_str(value: Any) -> str | None:
    text = _to_str(value)
    return text or None


def _to_prefix(value: Any) -> str | None:
    if value is None:
        return None
    return _to_opt_str(value)


def _to_pg_ssl(value: Any) -> str:
    if isinstance(value, bool):
        return "require" if value else "disable"
    text = _to_str(value).strip().lower()
    if text in ("true", "false"):
        return "require" if text == "true" else "disable"
    if text not in _PG_SSL_MODES:
        raise _Bad(f"{_q(value)} is not true, false or a libpq sslmode ({', '.join(_PG_SSL_MODES)})")
    return text


_CONVERTERS = {
    "str": _to_str,
    "opt_str": _to_opt_str,
    "bool": _to_bool,
    "int": _to_int,
    "duration": _to_duration,
    "list": _to_list,
    "split": _to_split,
    "map": _to_map,
    "records": _to_records,
    "mode": _to_mode,
    "prefix": _to_prefix,
    "pg_ssl": _to_pg_ssl,
}


def _convert(out: _Collector) -> dict[str, Any]:
    typed: dict[str, Any] = {}
    for name, value in out.values.items():
        key: Key = BY_NAME[name]
        if value is None and key.kind not in ("prefix",):
            continue  # "key:" with nothing after it: keep the default
        try:
            typed[key.attr] = _CONVERTERS[key.kind](value)
        except _Bad as e:
            out.problem(name, str(e))
    return typed


def _build(typed: Mapping[str, Any]) -> Config:
    tree: dict[str, Any] = {}
    for path, value in typed.items():
        node = tree
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value

    def make(obj: Any, changes: Mapping[str, Any]) -> Any:
        kwargs = {
            name: make(getattr(obj, name), sub) if isinstance(sub, dict) else sub
            for name, sub in changes.items()
        }
        return replace(obj, **kwargs)

    return make(Config(), tree)


# ---------------------------------------------------------------- public API


def parse_config_with_warnings(
    data: Mapping | str | None,
    environ: Mapping[str, str] | None = None,
    *,
    source: str = "config",
) -> tuple[Config, list[str]]:
    """
    Build a ``Config`` from a mapping or YAML text plus ``HEADSCALE_*`` overrides.

    Returns the config and the list of warnings (unknown or deprecated keys,
    unsupported ranges); raises :class:`ConfigError` listing every problem.
    ``environ=None`` applies no environment overrides.
    """
    if data is None:
        data = {}
    elif isinstance(data, str):
        data = _read_yaml(data, source)
    elif not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {_describe(data)}")
    out = _Collector()
    _flatten(data, "", out)
    _apply_aliases(out)
    if environ:
        _apply_environ(environ, out)
    typed = _convert(out)
    if out.problems:
        raise ConfigError(out.problems)
    config = check_config(_build(typed), out)
    if out.problems:
        raise ConfigError(out.problems)
    return config, out.warnings


def parse_config(
    data: Mapping | str | None,
    environ: Mapping[str, str] | None = None,
    warnings: MutableSequence[str] | None = None,
) -> Config:
    """Build a ``Config`` from a mapping or YAML text plus environment overrides.

    Warnings are appended to ``warnings`` when given, else discarded.
    """
    config, found = parse_config_with_warnings(data, environ)
    if warnings is not None:
        warnings.extend(found)
    return config


def find_config_file(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    search_paths: Sequence[str] = DEFAULT_SEARCH_PATHS,
) -> str | None:
    """Return the config file to read, or ``None`` for embedded defaults.

    An explicit ``path`` or ``HEADSCALE_CONFIG`` that does not exist is an error.
    """
    environ = os.environ if environ is None else environ
    for explicit, what in ((path, "config file"), (environ.get("HEADSCALE_CONFIG"), "HEADSCALE_CONFIG")):
        if explicit:
            if not os.path.isfile(explicit):
                raise ConfigError(f"{what} {_q(explicit)} does not exist or is not a file")
            return explicit
    home = environ.get("HOME") or os.path.expanduser("~")
    for candidate in search_paths:
        if candidate.startswith("~/"):
            candidate = os.path.join(home, candidate[2:])
        if os.path.isfile(candidate):
            return candidate
    return None


def load_config(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    search_paths: Sequence[str] = DEFAULT_SEARCH_PATHS,
    warnings: MutableSequence[str] | None = None,
) -> Config:
    """Find, read and parse the configuration file; log its warnings.

    ``environ`` defaults to ``os.environ`` (for ``HEADSCALE_CONFIG``, ``HOME``
    and the ``HEADSCALE_*`` overrides).
    """
    environ = os.environ if environ is None else environ
    found = find_config_file(path, environ, search_paths)
    if found is None:
        log.info("No config file found; using embedded defaults")
        config, notes = parse_config_with_warnings(None, environ)
    else:
        try:
            with open(found, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config file {_q(found)}: {e}") from None
        try:
            config, notes = parse_config_with_warnings(text, environ, source=found)
        except ConfigError as e:
            raise ConfigError([f"{found}: {line}" if not line.startswith(found) else line
                               for line in e.problems]) from None
        config = replace(config, source_path=os.path.abspath(found))
    for note in notes:
        log.warn("config: {note}", note=note)
    if warnings is not None:
        warnings.extend(notes)
    return config
