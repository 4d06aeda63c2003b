# -*- test-case-name: tests.deploy.test_nginx -*-
"""
Debian's nginx with the shipped site configurations, for tests.

The sites under ``deploy/nginx/`` are written for a real host (Let's Encrypt
paths, ``/var/log/nginx``). :func:`site_copy` substitutes exact strings (a
test's certificate, log folder, ports) and fails if one of them is not in the
file, so a changed site cannot silently escape the substitution.
:class:`NginxSites` writes a small main ``nginx.conf`` around the copies, all
paths under one folder, and runs ``nginx -t`` on it or starts nginx in the
foreground (``daemon off``) as a :class:`~.component.Component` in a namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import headscale_tw
from headscale_tw.testing.realclient._process import HarnessError
from headscale_tw.testing.realclient.component import Component
from headscale_tw.testing.realclient.namespace import Namespace

__all__ = ["NGINX", "NginxSites", "RawResponse", "deploy_dir", "fetch_raw", "require_nginx", "site_copy"]

NGINX = "/usr/sbin/nginx"

# The test's nginx master runs as root in the private namespace; its workers run as root too
# ("user root"), because every path they might touch is under the test's 0700 runtime folder.
_MAIN_CONF = """\
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log info;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {dir}/logs/access.log;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
{includes}
}}
"""


def deploy_dir() -> str:
    """The checkout's ``deploy/`` folder (beside ``src/``); :class:`HarnessError` if absent."""
    src = os.path.dirname(os.path.dirname(os.path.abspath(headscale_tw.__file__)))
    path = os.path.join(os.path.dirname(src), "deploy")
    if not os.path.isdir(path):
        raise HarnessError(f"no deploy/ folder beside {src}: run the tests from a checkout")
    return path


def require_nginx() -> str:
    """The nginx binary; :class:`HarnessError` naming the install step if it is missing."""
    if not os.access(NGINX, os.X_OK):
        raise HarnessError(f"{NGINX} is missing: apt-get install nginx "
                           "(tools/ensure-test-services.d/40-nginx-systemd.sh does it)")
    return NGINX


def site_copy(text: str, substitutions: Mapping[str, str]) -> str:
    """``text`` with every key of ``substitutions`` replaced; each key must occur."""
    for old, new in substitutions.items():
        if old not in text:
            raise HarnessError(f"the site configuration no longer contains {old!r}; update the test's substitutions")
        text = text.replace(old, new)
    return text


class NginxSites:
    """Copies of shipped sites plus a main ``nginx.conf``, all under ``directory``."""

    def __init__(self, directory: str, sites: Mapping[str, Mapping[str, str]]) -> None:
        """``sites`` maps file names under ``deploy/nginx`` to their substitutions.

        ``/var/log/nginx/`` always becomes ``directory/logs/``.
        """
        self.directory = os.path.abspath(directory)
        self.logs = os.path.join(self.directory, "logs")
        for sub in ("logs", "tmp"):
            os.makedirs(os.path.join(self.directory, sub), exist_ok=True)
        includes = []
        for name, substitutions in sites.items():
            with open(os.path.join(deploy_dir(), "nginx", name)) as f:
                text = f.read()
            text = site_copy(text, substitutions)
            text = site_copy(text, {"/var/log/nginx/": self.logs + "/"})
            path = os.path.join(self.directory, name)
            with open(path, "w") as f:
                f.write(text)
            includes.append(f"    include {path};")
        self.conf = os.path.join(self.directory, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(_MAIN_CONF.format(dir=self.directory, includes="\n".join(includes)))

    def argv(self, *extra: str) -> list[str]:
        """``nginx`` with this prefix, main config and error log, plus ``extra``."""
        return [require_nginx(), "-p", self.directory, "-c", self.conf,
                "-e", os.path.join(self.logs, "startup.log"), *extra]

    def test(self) -> subprocess.CompletedProcess:
        """``nginx -t`` on the copies (it parses and loads certificates; it binds nothing)."""
        return subprocess.run(self.argv("-t"), capture_output=True, text=True, timeout=60)

    def component(self, namespace: Namespace, ready=None, name: str = "nginx") -> Component:
        """nginx in the foreground in ``namespace`` (not started yet)."""
        return Component(namespace, name, self.argv("-g", "daemon off;"), ready=ready,
                         log_path=os.path.join(self.logs, "stdout.log"))

    def access_log(self, name: str) -> str:
        """The text of ``logs/<name>`` (empty if not written yet)."""
        try:
            with open(os.path.join(self.logs, name)) as f:
                return f.read()
        except FileNotFoundError:
            return ""


# Runs inside the namespace: one request, redirects NOT followed, verified against CAFILE
# when given. Prints {"status", "headers", "body"} or {"error"}.
_FETCH_RAW = r"""
import base64, http.client, json, ssl, sys, urllib.parse
method, url, cafile, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
body = base64.b64decode(sys.argv[5]) if sys.argv[5] else None
parts = urllib.parse.urlsplit(url)
try:
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=cafile or None)
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, parts.path + ("?" + parts.query if parts.query else ""), body=body, headers=headers)
    r = conn.getresponse()
    out = {"status": r.status, "headers": {k.lower(): v for k, v in r.getheaders()},
           "body": base64.b64encode(r.read()).decode()}
except Exception as e:
    out = {"error": "%s: %s" % (type(e).__name__, e)}
sys.stdout.write(json.dumps(out))
"""


@dataclass(frozen=True)
class RawResponse:
    """Status, lower-cased headers and body of one request made by :func:`fetch_raw`."""

    status: int
    headers: dict
    body: bytes


def fetch_raw(namespace: Namespace, url: str, cafile: str = "", method: str = "GET",
              timeout: float = 5.0, body: bytes | None = None) -> RawResponse:
    """One request from inside ``namespace``, redirects not followed; :class:`HarnessError` if it fails.

    ``body`` (sent as JSON) goes with the request when given.
    """
    import base64

    encoded = base64.b64encode(body).decode() if body is not None else ""
    proc = namespace.run([sys.executable, "-I", "-c", _FETCH_RAW, method, url, cafile, str(timeout), encoded],
                         timeout=timeout + 10)
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        raise HarnessError(f"fetch helper failed (exit {proc.returncode}): {proc.stderr[-500:]}") from None
    if "error" in out:
        raise HarnessError(f"{method} {url} failed: {out['error']}")
    return RawResponse(out["status"], out["headers"], base64.b64decode(out["body"]))
