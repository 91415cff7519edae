"""Fetch plugin wheels, and their signatures, from a package index.

pip resolves; portal-boot downloads. ``pip install --dry-run --report -`` (pip >=
22.2) runs in the image's own interpreter with the user's ``PIP_*`` settings, so
it honours ``PIP_INDEX_URL``, certificates and credentials, and it lists only what
the image lacks: the requested plugins plus any dependency the image does not
already satisfy (a dependency the image has is not fetched, since the image's copy
would win on ``sys.path`` anyway). Binary only (``--only-binary=:all:``): a
source distribution is never built.

The report gives every file's URL (and its sha256 when the index publishes one).
Each wheel is then downloaded into the private staging folder, checked against
that hash, and its signature is fetched from ``<wheel URL>.asc``: the place PEP 503
(``data-gpg-sig="true"``) and PEP 691 give a detached signature published beside
a file. Credentials in ``PIP_INDEX_URL`` / ``PIP_EXTRA_INDEX_URL`` are reused for
these downloads (the report strips them from the URLs); ``PIP_CERT`` is honoured.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from portal_boot import proc
from portal_boot.errors import InstallError, SignatureError
from portal_boot.logs import scrub

log = logging.getLogger(__name__)

# PIP_* variables that would turn a dry run into something else, or hide the
# image's own packages from the resolver. Everything else goes to pip untouched.
_OVERRIDDEN = {
    "PIP_TARGET", "PIP_PREFIX", "PIP_ROOT", "PIP_USER", "PIP_REPORT", "PIP_DRY_RUN",
    "PIP_IGNORE_INSTALLED", "PIP_REQUIRE_VIRTUALENV", "PIP_NO_BINARY", "PIP_QUIET", "PIP_VERBOSE",
}  # fmt: skip
_FIX = "check --requirement / PORTAL_BOOT_REQUIREMENTS and PIP_INDEX_URL"


@dataclasses.dataclass(frozen=True)
class Download:
    name: str
    version: str
    url: str  # without credentials
    sha256: str | None
    requested: bool  # named by a requirement, not pulled in as a dependency

    @property
    def filename(self) -> str:
        return urllib.parse.unquote(urllib.parse.urlsplit(self.url).path.rsplit("/", 1)[-1])


def pip_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in environ.items() if key not in _OVERRIDDEN}


def resolve(requirements: Sequence[str], environ: Mapping[str, str]) -> list[Download]:
    """What pip would install for ``requirements`` on top of the image. Raises InstallError."""
    argv = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-",
        "--only-binary=:all:", "--disable-pip-version-check", "--no-input", *requirements,
    ]  # fmt: skip
    result = proc.run(
        argv,
        env=pip_env(environ),
        error=InstallError,
        what="resolving --requirement / PORTAL_BOOT_REQUIREMENTS with pip (index: PIP_INDEX_URL)",
    )
    try:
        report = json.loads(result.stdout)
        items = report["install"]
    except (ValueError, KeyError, TypeError):
        raise InstallError(
            f"pip gave no installation report (pip >= 22.2 is needed in the image): {proc.tail(result)}"
        ) from None
    downloads = []
    for item in items:
        info = item.get("download_info") or {}
        archive = info.get("archive_info") or {}
        url = info.get("url") or ""
        sha256 = (archive.get("hashes") or {}).get("sha256")
        if sha256 is None and str(archive.get("hash", "")).startswith("sha256="):
            sha256 = archive["hash"].split("=", 1)[1]
        meta = item.get("metadata") or {}
        download = Download(
            meta.get("name", "?"),
            meta.get("version", "?"),
            url,
            sha256,
            bool(item.get("requested")),
        )
        if not download.filename.endswith(".whl") or "/" in download.filename:
            raise InstallError(
                f"{download.name} {download.version}: {scrub(url)} is not a wheel ({_FIX})"
            )
        downloads.append(download)
    return downloads


def _opener(environ: Mapping[str, str]) -> urllib.request.OpenerDirector:
    passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    for raw in [environ.get("PIP_INDEX_URL", ""), *environ.get("PIP_EXTRA_INDEX_URL", "").split()]:
        parts = urllib.parse.urlsplit(raw.strip())
        if parts.username and parts.hostname:
            netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
            passwords.add_password(
                None,
                f"{parts.scheme}://{netloc}/",
                urllib.parse.unquote(parts.username),
                urllib.parse.unquote(parts.password or ""),
            )
    cafile = environ.get("PIP_CERT") or environ.get("REQUESTS_CA_BUNDLE") or None
    context = ssl.create_default_context(cafile=cafile)
    # From settings.environ, not os.environ (no module reads the process environment).
    proxies = {}
    for scheme in ("http", "https"):
        value = environ.get(f"{scheme}_proxy") or environ.get(f"{scheme.upper()}_PROXY")
        if value:
            proxies[scheme] = value
    return urllib.request.build_opener(
        urllib.request.ProxyHandler(proxies),
        urllib.request.HTTPSHandler(context=context),
        urllib.request.HTTPBasicAuthHandler(passwords),
    )


def _timeout(environ: Mapping[str, str]) -> float:
    for var in ("PIP_TIMEOUT", "PIP_DEFAULT_TIMEOUT"):
        try:
            return float(environ[var])
        except (KeyError, ValueError):
            continue
    return 60.0


def _fetch(opener: urllib.request.OpenerDirector, url: str, dest: Path, timeout: float) -> str:
    """Download ``url`` to ``dest``; return its sha256. Retries what a retry can
    cure (connection errors, 5xx); an HTTPError 4xx propagates."""
    for attempt in range(3):
        try:
            digest = hashlib.sha256()
            with opener.open(url, timeout=timeout) as response, dest.open("wb") as out:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            return digest.hexdigest()
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == 2:
                raise
        except (urllib.error.URLError, OSError):
            if attempt == 2:
                raise
        time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def download(
    downloads: Sequence[Download],
    staging: Path,
    environ: Mapping[str, str],
    *,
    signatures: bool,
) -> dict[Path, str]:
    """Download every wheel (and, with ``signatures``, its ``.asc``) into ``staging``.

    Returns each staged wheel with its sha256. Raises InstallError when a wheel
    cannot be fetched or does not match the index's hash, SignatureError when a
    signature is missing or cannot be fetched.
    """
    opener, timeout = _opener(environ), _timeout(environ)
    staged: dict[Path, str] = {}
    missing: list[str] = []
    for item in downloads:
        wheel = staging / item.filename
        try:
            sha256 = _fetch(opener, item.url, wheel, timeout)
        except (urllib.error.URLError, OSError) as exc:
            raise InstallError(
                f"cannot download {scrub(item.url)} ({_reason(exc)}): {_FIX}"
            ) from None
        if item.sha256 and sha256 != item.sha256.lower():
            raise InstallError(
                f"{item.filename}: downloaded file does not match the index's sha256: "
                "the index or a proxy is serving altered files"
            )
        staged[wheel] = sha256
        if not signatures:
            continue
        try:
            _fetch(opener, item.url + ".asc", staging / f"{item.filename}.asc", timeout)
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise SignatureError(
                    f"{item.filename}: cannot fetch its signature {scrub(item.url)}.asc ({_reason(exc)})"
                ) from None
            missing.append(item.filename)
        except (urllib.error.URLError, OSError) as exc:
            if isinstance(getattr(exc, "reason", None), FileNotFoundError) or isinstance(
                exc, FileNotFoundError
            ):
                missing.append(item.filename)  # a file:// find-links folder
                continue
            raise SignatureError(
                f"{item.filename}: cannot fetch its signature {scrub(item.url)}.asc ({_reason(exc)})"
            ) from None
    if missing:
        raise SignatureError(
            f"no signature on the index for {', '.join(missing)}: publish each wheel's detached "
            "signature beside it as <wheel>.asc (PEP 503 data-gpg-sig)"
        )
    return staged


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
    return scrub(str(reason))
