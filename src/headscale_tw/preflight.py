# -*- test-case-name: tests.test_preflight -*-
"""
The checks start-up depends on, shared by the server and ``headscale configtest``.

One set of checks, two callers:

=====================  ==============================================  =========================================
check                  start-up (:mod:`headscale_tw.service`)          ``headscale configtest``
=====================  ==============================================  =========================================
socket lock            :class:`~headscale_tw.socketlock.SocketLock`    asks whether a live server holds it
                       taken first (``flock``)
policy (file mode)     :func:`check_policy` before the database opens  :func:`check_policy`
policy (database)      :func:`check_stored_policy` (read-only), then  :func:`check_stored_policy` (read-only)
                       validated when the control plane loads it
TLS files              :func:`check_tls` before anything listens       :func:`check_tls`
DNS provider           :func:`check_dns_provider` (its TSIG secret)    :func:`check_dns_provider`
Noise key              :func:`noise_key` (created when missing)        :func:`noise_key` (read only if present)
DERP keys              :func:`check_derp_keys` (created when missing)  :func:`check_derp_keys` (read only)
database               :func:`check_database` (read-only), then        :func:`check_database`: the same version
                       opened and migrated; the version check is       check, read-only, nothing created
                       :func:`~headscale_tw.storage.prepare.
                       judge_schema_state`
listeners              :func:`check_bindable` (bind and release),      :func:`check_listeners` (skipped while
                       then bound for real                             this server's lock is held)
=====================  ==============================================  =========================================

Start-up runs every check above synchronously, inside ``startService``, before
anything waits on the reactor, so a failure is found before anything is opened
for real. A daemonising ``twistd headscale`` tells its waiting parent only when
the start has finished (see ``HeadscaleService.startService``): what fails later
(migrations, the first ACME certificate) reaches the parent too, which exits 1.

Every check raises :class:`StartupError`, whose message is one line naming the
setting and the problem; :func:`one_line` turns any other exception into such a
line (the server's "could not start: ..." line).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from twisted.python.failure import Failure

from headscale_tw.hostport import parse_hostport, port_number

__all__ = [
    "StartupError",
    "Listener",
    "one_line",
    "start_failure_line",
    "check_policy",
    "check_stored_policy",
    "check_tls",
    "check_dns_provider",
    "noise_key",
    "check_derp_keys",
    "socket_lock",
    "describe_database",
    "check_database",
    "listeners",
    "check_listeners",
    "check_bindable",
    "configtest",
]


class StartupError(Exception):
    """A setting that keeps the server from starting; the message is one line naming it."""


def one_line(error: BaseException | Failure) -> str:
    """One line describing ``error`` (a multi-line driver message is joined; no traceback)."""
    if isinstance(error, Failure) and error.value is not None:
        error = error.value
    text = " ".join(str(error).split())
    if isinstance(error, (StartupError, ValueError)) or _known(error):
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def start_failure_line(config: Any, error: BaseException | Failure) -> str:
    """:func:`one_line`, naming the setting when a listener could not bind (as :func:`check_listeners` does)."""
    from twisted.internet.error import CannotListenError

    value = error.value if isinstance(error, Failure) else error
    if isinstance(value, CannotListenError):
        try:
            candidates = listeners(config)
        except StartupError:
            candidates = []
        for listener in candidates:
            if listener.port == value.port and (listener.host or "") in ("", "0.0.0.0", "::", value.interface):
                reason = getattr(value.socketError, "strerror", None) or value.socketError
                return f"{listener.setting} {listener.host}:{listener.port}: cannot listen: {reason}"
    return one_line(error)


def _known(error: BaseException) -> bool:
    from twisted.internet.error import CannotListenError

    from headscale_tw.config.loader import ConfigError
    from headscale_tw.errors import InvalidInput
    from headscale_tw.keys import KeyFileError
    from headscale_tw.policy.model import PolicyError
    from headscale_tw.socketlock import LockHeld
    from headscale_tw.storage.database import DatabaseFileError
    from headscale_tw.storage.prepare import DatabaseTooNew, PrepareError

    return isinstance(error, (CannotListenError, ConfigError, InvalidInput, KeyFileError, LockHeld,
                              DatabaseFileError, DatabaseTooNew, PrepareError, PolicyError, OSError))


# ---------------------------------------------------------------- policy


def check_policy(config: Any) -> str:
    """Read, parse and validate the policy file (``policy.mode: file``); return what was checked.

    The policy is compiled against no users and no nodes, which finds every
    error that does not depend on them (syntax, unknown groups, tags and hosts,
    bad ports); start-up compiles it again with the stored users and nodes.

    :raises StartupError: naming ``policy.path`` and the problem.
    """
    policy = config.policy
    if (policy.mode or "file") != "file":
        return f"policy.mode {policy.mode}: the stored policy is checked with the database"
    if not policy.path:
        return "no policy file (every node may reach every node)"
    try:
        with open(policy.path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise StartupError(f"policy.path {policy.path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise StartupError(f"policy.path {policy.path}: not valid UTF-8") from None
    _validate_policy(config, text, f"policy.path {policy.path}")
    return f"policy file {policy.path}"


def _validate_policy(config: Any, text: str, where: str) -> None:
    from headscale_tw.policy.compile import PolicyEngine
    from headscale_tw.policy.incremental import IncrementalCompiler
    from headscale_tw.policy.model import PolicyError

    try:
        engine = PolicyEngine(text or None, server_url=config.server_url)
        engine.check_compiled(IncrementalCompiler(engine, (), ()).compile())
    except PolicyError as e:
        raise StartupError(f"{where}: {one_line(e)}") from e


def check_stored_policy(config: Any) -> str | None:
    """``policy.mode: database``: read the policy in force (read-only) and validate it as :func:`check_policy` does.

    None when the policy lives in a file; call after :func:`check_database` passed.

    :raises StartupError: the stored policy does not parse or validate, or cannot be read.
    """
    if (config.policy.mode or "file") != "database":
        return None
    from headscale_tw.storage.database import check_sqlite_file
    from headscale_tw.storage.stores.policies import read_latest_policy

    where = describe_database(config)
    if config.database.type in ("sqlite", "sqlite3") and not check_sqlite_file(config.database.sqlite.path):
        return "stored policy: none yet (new database)"
    try:
        record = read_latest_policy(config.database)
    except Exception as e:
        raise StartupError(f"database ({where}): reading the stored policy: {one_line(e)}") from e
    if record is None or not record.data:
        return "stored policy: none (every node may reach every node)"
    _validate_policy(config, record.data, f"stored policy {record.id} (policy.mode database)")
    return f"stored policy {record.id}"


# ---------------------------------------------------------------- DNS provider


def check_dns_provider(config: Any) -> str | None:
    """Read and check the secret of ``dns.acme_provider`` (nothing is sent); ``None`` when there is none.

    :raises StartupError: naming the setting and the problem.
    """
    from twisted.internet.task import Clock

    from headscale_tw.dnsprovider.build import ProviderUnusable, build_provider

    p = config.dns.acme_provider
    if not p.type:
        return None
    try:
        build_provider(config, Clock())
    except ProviderUnusable as e:
        raise StartupError(str(e)) from None
    return f"DNS provider for tailscale cert: {p.type} {p.server}, TSIG key {p.tsig_key_name}"


# ---------------------------------------------------------------- TLS and keys


def check_tls(config: Any) -> str:
    """Load ``tls_cert_path`` and ``tls_key_path`` as the TLS listener will, and check that they match.

    :raises StartupError: naming the file and the problem.
    """
    tls = config.tls
    if tls.letsencrypt_hostname:
        return (f"TLS from ACME for {tls.letsencrypt_hostname} ({tls.letsencrypt_challenge_type}), "
                f"cached in {tls.letsencrypt_cache_dir}")
    if not tls.cert_path and not tls.key_path:
        return "no TLS (plain HTTP, or TLS ended in front of the server)"
    if not (tls.cert_path and tls.key_path):
        missing = "tls_key_path" if tls.cert_path else "tls_cert_path"
        raise StartupError(f"{missing} is empty; set both tls_cert_path and tls_key_path, or neither")
    from OpenSSL import SSL

    for key, path in (("tls_cert_path", tls.cert_path), ("tls_key_path", tls.key_path)):
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise StartupError(f"{key} {path}: {e.strerror or e}") from None
    context = SSL.Context(SSL.TLS_METHOD)
    try:
        context.use_certificate_chain_file(tls.cert_path)
    except SSL.Error:
        raise StartupError(f"tls_cert_path {tls.cert_path}: not a PEM certificate (chain)") from None
    try:
        context.use_privatekey_file(tls.key_path)
        context.check_privatekey()
    except SSL.Error:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            with open(tls.key_path, "rb") as f:
                load_pem_private_key(f.read(), None)
        except (ValueError, TypeError, OSError):
            raise StartupError(f"tls_key_path {tls.key_path}: not a PEM private key (without passphrase)") from None
        raise StartupError(f"tls_key_path {tls.key_path} does not belong to the certificate in "
                           f"tls_cert_path {tls.cert_path}") from None
    return f"TLS certificate {tls.cert_path}"


def noise_key(config: Any, create: bool) -> Any:
    """The server's Noise key: loaded, or created when missing and ``create`` (start-up).

    Without ``create`` (configtest) a missing file gives None: start-up will create it.

    :raises StartupError: the file exists but holds no key, or cannot be read or created.
    """
    from headscale_tw.keys import KeyFileError, load_or_generate_private_key

    path = config.noise.private_key_path
    if not create and not os.path.lexists(path):
        return None
    try:
        return load_or_generate_private_key(path)
    except KeyFileError as e:
        raise StartupError(f"noise.private_key_path: {one_line(e)}") from e
    except OSError as e:
        raise StartupError(f"noise.private_key_path {path}: {e.strerror or e}") from None


def check_derp_keys(config: Any, create: bool) -> str:
    """Load the embedded DERP server's key (created when missing and ``create``) and its mesh key.

    :raises StartupError: naming the setting and the file.
    """
    from headscale_tw.derp.mesh import load_mesh_key
    from headscale_tw.derp.server import load_or_generate_private_key

    derp = config.derp.server
    if not derp.enabled:
        return "embedded DERP server disabled"
    notes = []
    if create or os.path.lexists(derp.private_key_path):
        try:
            load_or_generate_private_key(derp.private_key_path)
        except (ValueError, OSError) as e:
            raise StartupError(f"derp.server.private_key_path: {one_line(e)}") from e
        notes.append(f"DERP key {derp.private_key_path}")
    else:
        notes.append(f"DERP key {derp.private_key_path}: missing; start-up creates it")
    if derp.mesh_key_path:
        try:
            load_mesh_key(derp.mesh_key_path)
        except ValueError as e:
            raise StartupError(f"derp.server.mesh_key_path: {one_line(e)}") from e
        notes.append(f"DERP mesh key {derp.mesh_key_path}")
    return "; ".join(notes)


# ---------------------------------------------------------------- socket lock


def socket_lock(config: Any) -> Any:
    """Take this server's lock on ``unix_socket`` (its folder is created); None without a socket.

    :raises StartupError: another live server holds it, or it cannot be created.
    """
    from headscale_tw.socketlock import LockHeld, SocketLock

    if not config.unix_socket:
        return None
    path = os.path.abspath(config.unix_socket)
    lock = SocketLock(path)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        lock.acquire()
    except LockHeld as e:
        raise StartupError(f"unix_socket {config.unix_socket}: {e}") from None
    except OSError as e:
        raise StartupError(f"unix_socket {config.unix_socket}: cannot create its lock file "
                           f"{lock.lock_path}: {e.strerror or e}") from None
    return lock


def _lock_holder(config: Any) -> int | None:
    from headscale_tw.socketlock import SocketLock

    if not config.unix_socket:
        return None
    return SocketLock(os.path.abspath(config.unix_socket)).holder()


# ---------------------------------------------------------------- database


def describe_database(config: Any) -> str:
    """``sqlite <path>`` or ``postgres <user>@<host>:<port>/<name>`` (no password)."""
    db = config.database
    if db.type in ("sqlite", "sqlite3"):
        return f"sqlite {db.sqlite.path}"
    pg = db.postgres
    return f"postgres {pg.user}@{pg.host}:{pg.port}/{pg.name}"


def check_database(config: Any) -> str:
    """Reach the database and read its schema version (read-only: nothing created or migrated).

    :raises StartupError: unreachable, not a headscale-tw database, or newer than this code.
    """
    from headscale_tw.storage.prepare import SCHEMA_VERSION, read_schema_version

    where = describe_database(config)
    try:
        version = read_schema_version(config.database)
    except Exception as e:
        raise StartupError(f"database ({where}): {one_line(e)}") from None
    if version is None:
        return f"database {where}: empty or missing; start-up creates schema version {SCHEMA_VERSION}"
    if version < SCHEMA_VERSION:
        return f"database {where}: schema version {version}; start-up upgrades it to {SCHEMA_VERSION}"
    return f"database {where}: schema version {version}"


# ---------------------------------------------------------------- listeners


@dataclass(frozen=True)
class Listener:
    """One address the server binds: the setting that names it, host, port and protocol."""

    setting: str
    host: str
    port: int
    udp: bool = False
    #: Bound by every worker with ``SO_REUSEPORT`` (``workers`` > 1).
    shared: bool = False


def _split_hostport(setting: str, value: str) -> tuple[str, int]:
    try:
        host, port = parse_hostport(value, named_port=True)
        return host, port_number(port)
    except (ValueError, OSError) as e:
        raise StartupError(f"{setting}: {e}") from None


def listeners(config: Any) -> list[Listener]:
    """Every TCP and UDP address the server listens on, with the setting that names it."""
    shared = getattr(config, "workers", 1) > 1
    found = [Listener("listen_addr", *_split_hostport("listen_addr", config.listen_addr), shared=shared)]
    if config.tls.letsencrypt_hostname and config.tls.letsencrypt_challenge_type == "HTTP-01":
        found.append(Listener("tls_letsencrypt_listen", *_split_hostport("tls_letsencrypt_listen",
                                                                         config.tls.letsencrypt_listen)))
    if config.metrics_listen_addr:
        found.append(Listener("metrics_listen_addr", *_split_hostport("metrics_listen_addr",
                                                                      config.metrics_listen_addr)))
    derp = config.derp.server
    if derp.enabled and derp.stun_listen_addr:
        host, port = _split_hostport("derp.server.stun_listen_addr", derp.stun_listen_addr)
        found.append(Listener("derp.server.stun_listen_addr", host, port, udp=True, shared=shared))
    return found


def _try_bind(listener: Listener) -> None:
    kind = socket.SOCK_DGRAM if listener.udp else socket.SOCK_STREAM
    host = listener.host or None
    try:
        family, _, _, _, address = socket.getaddrinfo(host, listener.port, type=kind, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind) as s:
            if not listener.udp:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's TCP ports do
            if listener.shared:  # workers bind it with SO_REUSEPORT (workers.py): so does the test
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(address)
    except OSError as e:
        raise StartupError(f"{listener.setting} {listener.host}:{listener.port}: cannot listen: "
                           f"{e.strerror or e}") from None


def check_listeners(config: Any) -> list[str]:
    """Bind and release every listener, unless a live server holds this config's socket lock.

    :raises StartupError: an address is in use or not available.
    """
    from headscale_tw.storage.database import folder_accepts_entries

    holder = _lock_holder(config)
    if holder is not None:
        running = f"pid {holder}" if holder else "a live process"
        return [f"listeners: not checked, this server is running ({running} holds "
                f"{os.path.abspath(config.unix_socket)}.lock)"]
    notes = check_bindable(config)
    if config.unix_socket:
        parent = os.path.dirname(os.path.abspath(config.unix_socket))
        probe = parent
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if not folder_accepts_entries(probe):
            raise StartupError(f"unix_socket {config.unix_socket}: {probe} is not a writable folder")
        notes.append(f"unix_socket {config.unix_socket} can be created")
    return notes


def check_bindable(config: Any) -> list[str]:
    """Bind and release every TCP and UDP listener of ``config`` (start-up holds its own lock when it asks).

    :raises StartupError: an address is in use or not available.
    """
    notes = []
    for listener in listeners(config):
        _try_bind(listener)
        protocol = "udp" if listener.udp else "tcp"
        notes.append(f"{listener.setting} {listener.host}:{listener.port} ({protocol}) can be bound")
    return notes


# ---------------------------------------------------------------- configtest


def configtest(config: Any) -> list[str]:
    """Run every check start-up depends on, without changing anything; return one note per check.

    :raises StartupError: at the first check start-up would fail.
    """
    notes = [check_policy(config), check_tls(config)]
    provider = check_dns_provider(config)
    if provider is not None:
        notes.append(provider)
    key = noise_key(config, create=False)
    path = config.noise.private_key_path
    notes.append(f"Noise key {path}" if key is not None else f"Noise key {path}: missing; start-up creates it")
    notes.append(check_derp_keys(config, create=False))
    notes.append(check_database(config))
    stored = check_stored_policy(config)
    if stored is not None:
        notes.append(stored)
    notes.extend(check_listeners(config))
    return notes
