# -*- test-case-name: tests.config.test_loader -*-
"""Checks of ``oidc``: the provider, the client's credentials and PKCE."""

from __future__ import annotations

from headscale_tw.config._durations import _q
from headscale_tw.config.checks._report import Report, check_url
from headscale_tw.config.model import Config

__all__ = ["check"]


def check(c: Config, report: Report) -> Config:
    """PKCE's method is known; with an issuer set, the client id and exactly one secret source are given."""
    o = c.oidc
    if o.pkce_method not in ("plain", "S256"):
        report.problem("oidc.pkce.method", f"{_q(o.pkce_method)} is not one of plain, S256")
    if o.issuer:
        problem = check_url(o.issuer)
        if problem:
            report.problem("oidc.issuer", problem)
        if not o.client_id:
            report.problem("oidc.client_id", "is required when oidc.issuer is set")
        if o.client_secret and o.client_secret_path:
            report.problem("oidc.client_secret", "and oidc.client_secret_path are mutually exclusive")
        elif not (o.client_secret or o.client_secret_path):
            report.problem("oidc.client_secret", "or oidc.client_secret_path is required when oidc.issuer is set")
    return c
