# -*- test-case-name: tests.test_preflight -*-
"""Tests for headscale_tw.preflight: the checks start-up and configtest share."""

import os
import socket
import sqlite3
from dataclasses import replace

from twisted.python.failure import Failure
from twisted.trial import unittest

from headscale_tw import preflight
from headscale_tw.config.loader import parse_config
from headscale_tw.preflight import StartupError
from headscale_tw.socketlock import SocketLock
from headscale_tw.storage.prepare import SCHEMA_VERSION
from headscale_tw.testing.db import ThreadlessReactor, create_postgres_database, open_test_database, sqlite_config

__all__ = ["OneLineTests", "StartFailureLineTests", "PolicyCheckTests", "TLSCheckTests", "NoiseKeyCheckTests", "StoredPolicyCheckTests", "DERPKeyCheckTests",
           "DatabaseCheckTests",
           "ListenerCheckTests", "ConfigtestTests"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Folder(unittest.TestCase):
    def setUp(self):
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)

    def path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def write(self, name: str, text: str) -> str:
        with open(self.path(name), "w") as f:
            f.write(text)
        return self.path(name)

    def config(self, **data):
        """A config whose files all live in this test's folder (no listeners but listen_addr)."""
        base = {
            "listen_addr": f"127.0.0.1:{_free_port()}",
            "metrics_listen_addr": "",
            "unix_socket": self.path("hs.sock"),
            "noise": {"private_key_path": self.path("noise.key")},
            "database": {"type": "sqlite", "sqlite": {"path": self.path("db.sqlite")}},
            "derp": {"server": {"enabled": False}},
        }
        base.update(data)
        return parse_config(base, environ={})


class OneLineTests(unittest.TestCase):
    """one_line describes any failure in one line."""

    def test_multi_line_message_joined(self):
        """A driver message over several lines becomes one line, prefixed with its type."""
        failure = Failure(RuntimeError("connection refused\n\tIs the server running?\n"))
        self.assertEqual(preflight.one_line(failure), "RuntimeError: connection refused Is the server running?")

    def test_known_errors_bare(self):
        """StartupError and OS errors are shown without a type name."""
        self.assertEqual(preflight.one_line(StartupError("policy.path x: bad")), "policy.path x: bad")
        self.assertEqual(preflight.one_line(FileNotFoundError(2, "No such file")), "[Errno 2] No such file")


class StartFailureLineTests(_Folder):
    """start_failure_line names the setting of a listener that could not bind."""

    def test_listener_named(self):
        """A CannotListenError on a configured address names its setting, as configtest does."""
        import errno

        from twisted.internet.error import CannotListenError

        config = self.config(listen_addr="127.0.0.1:8080")
        error = CannotListenError("127.0.0.1", 8080, OSError(errno.EADDRINUSE, "Address already in use"))
        self.assertEqual(preflight.start_failure_line(config, Failure(error)),
                         "listen_addr 127.0.0.1:8080: cannot listen: Address already in use")
        other = CannotListenError("127.0.0.1", 1234, OSError(errno.EADDRINUSE, "Address already in use"))
        self.assertIn("Couldn't listen on 127.0.0.1:1234", preflight.start_failure_line(config, other))


class PolicyCheckTests(_Folder):
    """check_policy reads, parses and validates the policy file."""

    def test_no_policy(self):
        """Without a policy file there is nothing to check."""
        self.assertIn("no policy file", preflight.check_policy(self.config()))

    def test_valid(self):
        """A valid policy passes and is named."""
        path = self.write("p.hujson", '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}')
        self.assertIn(path, preflight.check_policy(self.config(policy={"path": path})))

    def test_problems_named(self):
        """Syntax errors, unknown groups and missing files name policy.path and the problem."""
        cases = {
            self.write("syntax.hujson", '{"acls": ['): "unexpected end of input",
            self.write("group.hujson", '{"acls": [{"action": "accept", "src": ["group:x"], "dst": ["*:*"]}]}'):
                'group "group:x" is not defined',
            self.path("missing.hujson"): "No such file",
        }
        for path, problem in cases.items():
            with self.assertRaises(StartupError) as e:
                preflight.check_policy(self.config(policy={"path": path}))
            self.assertIn(f"policy.path {path}: ", str(e.exception))
            self.assertIn(problem, str(e.exception))
            self.assertEqual(len(str(e.exception).splitlines()), 1)


class TLSCheckTests(_Folder):
    """check_tls loads the certificate and key as the TLS listener does."""

    def test_missing_and_mismatched(self):
        """Missing files, a lone setting and a key of another certificate are each named."""
        from headscale_tw.testing.realclient.tlsca import make_test_ca

        one, two = make_test_ca(self.path("one")), make_test_ca(self.path("two"))
        self.assertIn(one.cert_pem, preflight.check_tls(self.config(tls_cert_path=one.cert_pem,
                                                                    tls_key_path=one.key_pem)))
        cases = [
            ({"tls_cert_path": self.path("none.pem"), "tls_key_path": one.key_pem}, "tls_cert_path"),
            ({"tls_cert_path": one.cert_pem, "tls_key_path": two.key_pem}, "does not belong"),
            ({"tls_cert_path": one.key_pem, "tls_key_path": one.key_pem}, "not a PEM certificate"),
        ]
        for settings, problem in cases:
            with self.assertRaises(StartupError) as e:
                preflight.check_tls(self.config(**settings))
            self.assertIn(problem, str(e.exception))


class NoiseKeyCheckTests(_Folder):
    """noise_key loads the key; only start-up creates it."""

    def test_missing_not_created_by_check(self):
        """Without create a missing key gives None and no file; with create the file appears, 0600."""
        config = self.config()
        self.assertIsNone(preflight.noise_key(config, create=False))
        self.assertFalse(os.path.exists(self.path("noise.key")))
        self.assertIsNotNone(preflight.noise_key(config, create=True))
        self.assertEqual(os.stat(self.path("noise.key")).st_mode & 0o777, 0o600)
        self.assertIsNotNone(preflight.noise_key(config, create=False))

    def test_corrupt(self):
        """A file without a key names noise.private_key_path and is left alone."""
        self.write("noise.key", "garbage\n")
        with self.assertRaises(StartupError) as e:
            preflight.noise_key(self.config(), create=True)
        self.assertIn("noise.private_key_path", str(e.exception))
        with open(self.path("noise.key")) as f:
            self.assertEqual(f.read(), "garbage\n")


class StoredPolicyCheckTests(_Folder):
    """check_stored_policy validates the policy in force with policy.mode database, read-only."""

    def test_stored_policy(self):
        """No policy, a valid one and an invalid one (named with its id) as start-up would see them."""
        from headscale_tw.testing.db import resolve

        config = self.config(policy={"mode": "database"})
        self.assertIsNone(preflight.check_stored_policy(self.config()))
        self.assertIn("new database", preflight.check_stored_policy(config))
        db = open_test_database(self, sqlite_config(self.path("db.sqlite"), write_ahead_log=False))
        self.assertIn("none", preflight.check_stored_policy(config))
        resolve(db.policies.set('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'))
        self.assertIn("stored policy 1", preflight.check_stored_policy(config))
        resolve(db.policies.set('{"acls": [{"action": "accept", "src": ["group:gone"], "dst": ["*:*"]}]}'))
        with self.assertRaises(StartupError) as e:
            preflight.check_stored_policy(config)
        self.assertIn('stored policy 2 (policy.mode database): acls[0].src[0]: group "group:gone"', str(e.exception))


class DERPKeyCheckTests(_Folder):
    """check_derp_keys loads the DERP server and mesh keys."""

    def test_keys(self):
        """A missing DERP key is only created by start-up; a corrupt one or a missing mesh key is named."""
        derp = {"server": {"enabled": True, "private_key_path": self.path("derp.key")}}
        self.assertIn("start-up creates it", preflight.check_derp_keys(self.config(derp=derp), create=False))
        self.assertFalse(os.path.exists(self.path("derp.key")))
        self.write("derp.key", "nonsense\n")
        with self.assertRaises(StartupError) as e:
            preflight.check_derp_keys(self.config(derp=derp), create=True)
        self.assertIn("derp.server.private_key_path: DERP private key file", str(e.exception))
        os.unlink(self.path("derp.key"))
        mesh = {"server": {**derp["server"], "mesh_key_path": self.path("mesh.key")}}
        with self.assertRaises(StartupError) as e:
            preflight.check_derp_keys(self.config(derp=mesh), create=True)
        self.assertIn("derp.server.mesh_key_path", str(e.exception))


class DatabaseCheckTests(_Folder):
    """check_database reads the schema version and changes nothing."""

    def test_sqlite_missing_not_created(self):
        """A missing SQLite file is reported as created at start-up, and is not created (nor its folder)."""
        config = self.config(database={"type": "sqlite", "sqlite": {"path": self.path("sub/db.sqlite")}})
        self.assertIn("start-up creates", preflight.check_database(config))
        self.assertFalse(os.path.exists(self.path("sub")))

    def test_sqlite_existing_read_only(self):
        """An existing database reports its version; its bytes and folder are unchanged."""
        path = self.path("db.sqlite")
        open_test_database(self, sqlite_config(path, write_ahead_log=False))
        with open(path, "rb") as f:
            before = f.read()
        listing = sorted(os.listdir(self.folder))
        self.assertIn(f"schema version {SCHEMA_VERSION}", preflight.check_database(self.config()))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(sorted(os.listdir(self.folder)), listing)

    def test_sqlite_problems(self):
        """A folder as path, a foreign database and a newer schema each fail with one line."""
        os.makedirs(self.path("dir.sqlite"))
        foreign = sqlite3.connect(self.path("foreign.sqlite"))
        foreign.execute("CREATE TABLE other (x)")
        foreign.commit()
        foreign.close()
        newer = sqlite3.connect(self.path("newer.sqlite"))
        newer.executescript("CREATE TABLE schema_version (lock CHAR(1), version INTEGER);"
                            "INSERT INTO schema_version VALUES ('X', 999);")
        newer.close()
        for name, problem in (("dir.sqlite", "is a directory"), ("foreign.sqlite", "not created by headscale-tw"),
                              ("newer.sqlite", "schema version 999 is newer")):
            config = self.config(database={"type": "sqlite", "sqlite": {"path": self.path(name)}})
            with self.assertRaises(StartupError) as e:
                preflight.check_database(config)
            self.assertIn(f"database (sqlite {self.path(name)})", str(e.exception))
            self.assertIn(problem, str(e.exception))

    def test_postgres(self):
        """A reachable PostgreSQL database reports its version; a missing one and a closed port fail by name."""
        db_config = create_postgres_database(self)
        open_test_database(self, db_config, reactor=ThreadlessReactor())
        config = replace(self.config(), database=db_config)
        self.assertIn(f"schema version {SCHEMA_VERSION}", preflight.check_database(config))
        missing = replace(config, database=replace(db_config, postgres=replace(db_config.postgres,
                                                                               name="hstw_none_here")))
        with self.assertRaises(StartupError) as e:
            preflight.check_database(missing)
        self.assertIn('database "hstw_none_here" does not exist', str(e.exception))
        closed = replace(config, database=replace(db_config, postgres=replace(db_config.postgres, host="127.0.0.1",
                                                                              port=_free_port())))
        with self.assertRaises(StartupError) as e:
            preflight.check_database(closed)
        self.assertIn("Connection refused", str(e.exception))


class ListenerCheckTests(_Folder):
    """check_listeners binds each address, unless this server is running."""

    def test_busy_port_named(self):
        """A port in use fails naming the setting and the address."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            with self.assertRaises(StartupError) as e:
                preflight.check_listeners(self.config(listen_addr=f"127.0.0.1:{port}"))
        self.assertIn(f"listen_addr 127.0.0.1:{port}: cannot listen", str(e.exception))

    def test_free_ports_and_udp(self):
        """Free TCP and UDP addresses are reported bindable."""
        config = self.config(derp={"server": {"enabled": True, "stun_listen_addr": f"127.0.0.1:{_free_port()}"}})
        notes = preflight.check_listeners(config)
        self.assertEqual(len(notes), 3)
        self.assertIn("(udp) can be bound", notes[1])

    def test_running_server_skips(self):
        """While this config's socket lock is held (a running server) nothing is bound."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            config = self.config(listen_addr=f"127.0.0.1:{busy.getsockname()[1]}")
            lock = SocketLock(config.unix_socket)
            lock.acquire()
            self.addCleanup(lock.release)
            (note,) = preflight.check_listeners(config)
        self.assertIn(f"pid {os.getpid()}", note)

    def test_bindable_while_own_lock_held(self):
        """check_bindable (start-up's check, made while it holds its own lock) binds anyway and names a busy port."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            config = self.config(listen_addr=f"127.0.0.1:{port}")
            lock = SocketLock(config.unix_socket)
            lock.acquire()
            self.addCleanup(lock.release)
            with self.assertRaises(StartupError) as e:
                preflight.check_bindable(config)
        self.assertIn(f"listen_addr 127.0.0.1:{port}: cannot listen", str(e.exception))


class ConfigtestTests(_Folder):
    """configtest runs every check and creates nothing."""

    def test_all_checks_nothing_created(self):
        """A fresh config passes with one note per check and leaves the folder empty."""
        notes = preflight.configtest(self.config())
        self.assertEqual(len(notes), 7)
        self.assertEqual(os.listdir(self.folder), [])
