# -*- test-case-name: tests.realclient.test_chromium_pages -*-
"""
Headless Chromium, Debian's package, rendering a page inside the test's private namespace.

:func:`render` runs ``/usr/bin/chromium --headless`` once with the harness's
:meth:`~headscale_tw.testing.realclient.namespace.Namespace.run` (so the
browser is in the loopback-only namespace, where the server and the provider
are, and can reach nothing else), a throwaway profile and ``HOME``, and both
``--screenshot`` and ``--dump-dom``: one page load gives the DOM after scripts
ran and a PNG of it. A page is loaded once, which matters for one-time URLs
such as a sign-in callback.

TLS: Chromium is told to accept exactly the given certificates' public keys
(``--ignore-certificate-errors-spki-list``, SHA-256 of each SubjectPublicKeyInfo),
the throwaway certificates the test made; nothing else is trusted blindly.

:func:`start_devtools_browser` starts a long-running Chromium as a
:class:`~headscale_tw.testing.realclient.component.Component` with DevTools on a
loopback port, for :mod:`headscale_tw.testing.chromium_cdp` to drive a whole
sign-in through the provider's forms.

:func:`decode_png` is a small reader for the 8-bit RGB/RGBA PNGs Chromium
writes (stdlib ``zlib``, the five PNG row filters), so a test can assert that
a screenshot is a real render: its size, and that it is not one flat colour.

``tools/ensure-test-services.d/60-chromium.sh`` installs the package; when it is
missing the test fails with that hint. Nothing here downloads a browser.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from headscale_tw.testing.realclient._process import HarnessError
from headscale_tw.testing.realclient.component import Component, http_ready
from headscale_tw.testing.realclient.namespace import Namespace

__all__ = ["CHROMIUM", "PngImage", "Render", "browser_argv", "decode_png", "find_chromium", "render",
           "spki_sha256", "start_devtools_browser"]

CHROMIUM = "/usr/bin/chromium"
"""Debian's launcher for the ``chromium`` package."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_PIXELS = 4096 * 4096


def find_chromium(path: str = CHROMIUM) -> str:
    """Debian's Chromium, or :class:`HarnessError` naming the setup step."""
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise HarnessError(f"{path} is missing; run tools/ensure-test-services.sh (step 60-chromium: "
                           "apt-get install chromium)")
    return path


def spki_sha256(cert_pem_path: str) -> str:
    """Base64 SHA-256 of the certificate's SubjectPublicKeyInfo, as Chromium's SPKI list wants it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    with open(cert_pem_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


@dataclass(frozen=True)
class PngImage:
    """A decoded image: size and rows of ``(r, g, b)`` pixels."""

    width: int
    height: int
    rows: tuple[tuple[tuple[int, int, int], ...], ...]

    def colours(self) -> dict[tuple[int, int, int], int]:
        """How many pixels have each colour."""
        counts: dict[tuple[int, int, int], int] = {}
        for row in self.rows:
            for pixel in row:
                counts[pixel] = counts.get(pixel, 0) + 1
        return counts

    def ink(self) -> float:
        """The share of pixels that differ from the most common (background) colour."""
        counts = self.colours()
        background = max(counts.values())
        return 1.0 - background / (self.width * self.height)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(data: bytes) -> PngImage:
    """Decode an 8-bit, non-interlaced RGB or RGBA PNG; ``ValueError`` for anything else."""
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG (bad signature)")
    pos, header, idat = len(_PNG_SIGNATURE), None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError("PNG without IHDR")
    width, height, depth, colour_type, _, _, interlace = header
    if depth != 8 or colour_type not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour_type}, interlace {interlace}")
    if width * height > _MAX_PIXELS:
        raise ValueError(f"PNG too large to check: {width}x{height}")
    bpp = 3 if colour_type == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    if len(raw) != height * (stride + 1):
        raise ValueError("PNG data does not match its size")
    previous = bytearray(stride)
    rows = []
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up = previous[i]
            upper_left = previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                line[i] = (line[i] + _paeth(left, up, upper_left)) & 0xFF
            elif kind != 0:
                raise ValueError(f"unknown PNG filter {kind}")
        rows.append(tuple((line[x], line[x + 1], line[x + 2]) for x in range(0, stride, bpp)))
        previous = line
    return PngImage(width, height, tuple(rows))


@dataclass(frozen=True)
class Render:
    """One page load: the DOM text Chromium printed, the screenshot's path and its decoded image."""

    url: str
    dom: str
    png_path: str
    image: PngImage


def browser_argv(home: str, trusted_certs: Sequence[str], window: tuple[int, int]) -> list[str]:
    """Headless Chromium with a profile under ``home``, trusting only ``trusted_certs``' keys for TLS."""
    # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
    argv = [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--hide-scrollbars", f"--user-data-dir={os.path.join(home, 'profile')}",
            f"--window-size={window[0]},{window[1]}"]
    if trusted_certs:
        argv.append("--ignore-certificate-errors-spki-list=" + ",".join(spki_sha256(c) for c in trusted_certs))
    return argv


def start_devtools_browser(namespace: Namespace, trusted_certs: Sequence[str] = (),
                           window: tuple[int, int] = (900, 700), timeout: float = 60.0) -> tuple[Component, int]:
    """A long-running headless Chromium in ``namespace`` offering DevTools on a loopback port; ``(it, port)``.

    It is a :class:`~headscale_tw.testing.realclient.component.Component`: ready
    once ``/json/version`` answers, stopped by PID (and with the namespace).
    Drive it with ``python -m headscale_tw.testing.chromium_cdp`` run in the namespace.
    """
    port = namespace.allocate_port()
    home = tempfile.mkdtemp(prefix="chromium-", dir=namespace.runtime_dir)
    argv = [*browser_argv(home, trusted_certs, window), f"--remote-debugging-port={port}", "about:blank"]
    browser = Component(namespace, "chromium", argv, env={"HOME": home},
                        ready=http_ready(namespace, f"http://127.0.0.1:{port}/json/version", {200}))
    return browser.start(timeout), port


def render(namespace: Namespace, url: str, png_path: str, trusted_certs: Sequence[str] = (),
           window: tuple[int, int] = (900, 700), timeout: float = 90.0) -> Render:
    """Load ``url`` once in headless Chromium inside ``namespace``; its DOM and screenshot.

    ``trusted_certs`` are PEM certificate paths whose keys Chromium accepts for TLS.
    """
    home = tempfile.mkdtemp(prefix="chromium-", dir=namespace.runtime_dir)
    try:
        argv = [*browser_argv(home, trusted_certs, window), f"--screenshot={png_path}", "--dump-dom", url]
        proc = namespace.run(argv, env=namespace.env({"HOME": home}), timeout=timeout)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if proc.returncode != 0 or not os.path.exists(png_path):
        raise HarnessError(f"chromium failed on {url} (exit {proc.returncode}): {proc.stderr[-2000:]}")
    with open(png_path, "rb") as f:
        image = decode_png(f.read())
    return Render(url, proc.stdout, png_path, image)
