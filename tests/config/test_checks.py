# -*- test-case-name: tests.config.test_checks -*-
"""Tests for :mod:`headscale_tw.config.checks`: one check per section, run through one report."""

from dataclasses import replace

from twisted.trial import unittest

from headscale_tw.config.checks import SECTIONS, check_config, database, dns
from headscale_tw.config.model import Config, ExtraRecord

__all__ = ["SectionCheckTests"]


class _Recorder:
    """A report that keeps what it is told, and says which keys count as given."""

    def __init__(self, given: tuple[str, ...] = ()) -> None:
        self.problems: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        self._given = given

    def problem(self, key: str, text: str) -> None:
        self.problems.append((key, text))

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def given(self, key: str) -> bool:
        return key in self._given


class SectionCheckTests(unittest.TestCase):
    """Each section's rules live in one module and report through the same interface."""

    def test_defaults_pass_every_section(self) -> None:
        """The embedded defaults raise no problem in any section."""
        report = _Recorder()
        check_config(Config(), report)
        self.assertEqual(report.problems, [])
        self.assertEqual(len(SECTIONS), 13)

    def test_section_reports_only_its_keys(self) -> None:
        """A bad database type is reported by the database check alone, under its key."""
        config = Config()
        config = replace(config, database=replace(config.database, type="mysql"))
        report = _Recorder()
        check_config(config, report)
        self.assertEqual([key for key, _ in report.problems], ["database.type"])
        self.assertIn("mysql", report.problems[0][1])

    def test_normalises(self) -> None:
        """A section check returns its section in canonical form (sqlite3 becomes sqlite)."""
        config = Config()
        config = replace(config, database=replace(config.database, type="sqlite3"))
        self.assertEqual(database.check(config, _Recorder()).database.type, "sqlite")

    def test_given_decides_exclusivity(self) -> None:
        """Inline extra records clash with a records file only when they were set explicitly."""
        config = Config()
        config = replace(config, dns=replace(config.dns, extra_records_path="/x.json",
                                             extra_records=(ExtraRecord("a.example", "A", "100.64.0.9"),)))
        quiet = _Recorder()
        dns.check(config, quiet)
        self.assertEqual(quiet.problems, [])
        told = _Recorder(given=("dns.extra_records",))
        dns.check(config, told)
        self.assertEqual([key for key, _ in told.problems], ["dns.extra_records"])

    def test_oidc_use_expiry_from_token_accepted(self) -> None:
        """``oidc.use_expiry_from_token`` is parsed and, being implemented, draws no warning."""
        from headscale_tw.config.checks import oidc
        from headscale_tw.config.loader import parse_config_with_warnings

        text = ("server_url: https://hs.example.com\noidc:\n  issuer: https://idp.example.com\n"
                "  client_id: c\n  client_secret: s\n  use_expiry_from_token: true\n")
        config, warnings = parse_config_with_warnings(text)
        self.assertTrue(config.oidc.use_expiry_from_token)
        self.assertEqual([w for w in warnings if "use_expiry_from_token" in str(w)], [])
        report = _Recorder()
        oidc.check(config, report)
        self.assertEqual((report.problems, report.warnings), ([], []))


class AuditRetentionCheckTests(unittest.TestCase):
    """``audit.retention`` is 0 or at least an hour."""

    def problems(self, retention):
        from headscale_tw.config.checks import audit
        from headscale_tw.config.model import AuditConfig

        report = _Recorder()
        audit.check(replace(Config(), audit=AuditConfig(retention=retention)), report)
        return report.problems

    def test_values(self):
        """0 and 90 days pass; a negative value or 90 seconds is a problem under audit.retention."""
        self.assertEqual(self.problems(0), [])
        self.assertEqual(self.problems(90 * 86400.0), [])
        for bad in (-1.0, 90.0):
            [(key, _)] = self.problems(bad)
            self.assertEqual(key, "audit.retention")

    def test_yaml(self):
        """``audit.retention: 90d`` in the YAML is 90 days; the embedded default is 90 days too."""
        from headscale_tw.config.loader import parse_config

        self.assertEqual(parse_config({"audit": {"retention": "30d"}}).audit.retention, 30 * 86400.0)
        self.assertEqual(Config().audit.retention, 90 * 86400.0)


class WorkersCheckTests(unittest.TestCase):
    """``workers`` is bounded and needs PostgreSQL above 1."""

    def problems(self, workers: int, db_type: str = "postgres") -> list[tuple[str, str]]:
        config = Config()
        config = replace(config, workers=workers,
                         database=replace(config.database, type=db_type,
                                          postgres=replace(config.database.postgres, host="h", name="n")))
        report = _Recorder()
        check_config(config, report)
        return report.problems

    def test_bounds(self) -> None:
        """1, 2 and 64 pass on PostgreSQL; 0, -1 and 65 are problems under ``workers``."""
        for good in (1, 2, 64):
            self.assertEqual(self.problems(good), [])
        for bad in (0, -1, 65):
            [(key, text)] = self.problems(bad)
            self.assertEqual(key, "workers")
            self.assertIn(str(bad), text)

    def test_sqlite_refused(self) -> None:
        """Two workers on SQLite are refused with a message naming both keys; one is fine."""
        self.assertEqual(self.problems(1, "sqlite"), [])
        [(key, text)] = self.problems(2, "sqlite")
        self.assertEqual(key, "workers")
        self.assertIn("database.type", text)
        self.assertIn("postgres", text)

    def test_acme_refused(self) -> None:
        """Two workers with ``tls_letsencrypt_hostname`` are refused (the ACME listeners are not shared)."""
        config = Config()
        config = replace(config, workers=2, tls=replace(config.tls, letsencrypt_hostname="hs.example.com"),
                         database=replace(config.database, type="postgres",
                                          postgres=replace(config.database.postgres, host="h", name="n")))
        report = _Recorder()
        from headscale_tw.config.checks import workers

        workers.check(config, report)
        [(key, text)] = report.problems
        self.assertEqual(key, "workers")
        self.assertIn("tls_letsencrypt_hostname", text)

    def test_yaml_and_environment(self) -> None:
        """``workers: 4`` in the YAML and ``HEADSCALE_WORKERS`` both set the key; the default is 1."""
        from headscale_tw.config.loader import ConfigError, parse_config, parse_config_with_warnings

        self.assertEqual(Config().workers, 1)
        pg = {"type": "postgres", "postgres": {"host": "h", "name": "n"}}
        self.assertEqual(parse_config({"workers": 4, "database": pg}).workers, 4)
        config, _ = parse_config_with_warnings({"database": pg}, {"HEADSCALE_WORKERS": "3"})
        self.assertEqual(config.workers, 3)
        with self.assertRaises(ConfigError) as raised:
            parse_config({"workers": 2, "database": {"type": "sqlite", "sqlite": {"path": "x.db"}}})
        self.assertIn("database.type: postgres", str(raised.exception))
