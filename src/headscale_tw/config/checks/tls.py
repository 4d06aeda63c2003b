# -*- test-case-name: tests.config.test_loader -*-
"""Checks of the TLS keys: a certificate pair or ACME (Let's Encrypt), never both."""

from __future__ import annotations

from headscale_tw.config._durations import _q
from headscale_tw.config.checks._report import Report, check_url
from headscale_tw.config.model import Config
from headscale_tw.hostport import parse_hostport

__all__ = ["check"]


def check(c: Config, report: Report) -> Config:
    """Certificate and key come together; ACME settings are complete and usable."""
    t = c.tls
    if t.letsencrypt_hostname and (t.cert_path or t.key_path):
        report.problem("tls_letsencrypt_hostname",
                       "set either tls_letsencrypt_hostname or tls_cert_path/tls_key_path, not both")
    if bool(t.cert_path) != bool(t.key_path):
        missing, given = ("tls_key_path", "tls_cert_path") if t.cert_path else ("tls_cert_path", "tls_key_path")
        report.problem(missing, "must be set together with " + given)
    if t.letsencrypt_challenge_type not in ("HTTP-01", "TLS-ALPN-01"):
        report.problem("tls_letsencrypt_challenge_type",
                       f"{_q(t.letsencrypt_challenge_type)} is not one of HTTP-01, TLS-ALPN-01")
    elif (t.letsencrypt_hostname and t.letsencrypt_challenge_type == "TLS-ALPN-01"
          and not c.listen_addr.endswith(":443")):
        report.warn("tls_letsencrypt_challenge_type TLS-ALPN-01 needs the server reachable on port 443; "
                    "listen_addr should end in :443")
    if t.letsencrypt_hostname:
        try:
            parse_hostport(t.letsencrypt_listen, named_port=True)
        except ValueError as e:
            report.problem("tls_letsencrypt_listen", str(e))
        problem = check_url(t.acme_url)
        if problem:
            report.problem("acme_url", problem)
    return c
