"""No password and no key material in any output: every command, succeeding and
failing, at debug level, in text and in JSON.

The database role's password is full of URL characters, so it appears in the URL
percent-encoded; the scan looks for it raw and in both encodings. The key material
is the operator's public key file and a secret key file handed to portal-boot by
mistake: their armor lines (``-----BEGIN PGP ...``) and every line of their
base64 bodies. The failures include the nasty ones: a wrong password (also a
secret), a malformed URL that holds the password, and a plugin revision whose error
message quotes the connection URL with its password.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote, quote_plus

import gpgkeys
import pytest
from boot_support import PORTAL, signed_wheel_folder, trusted_key_file
from pgserver import PgServer, free_port
from sqlalchemy.engine import make_url
from test_migrations_support import install_plugin, revision
from test_run import stop, wait_http

PASSWORD = "Pw$3cr3t@db/:%?#&=+ x"
WRONG = "Wr0ng@pw/:%?#&=+ y"

# A plugin revision whose error quotes the URL of its connection, password and all.
LEAKY = """
url = op.get_bind().engine.url.render_as_string(hide_password=False)
raise RuntimeError(f"cannot migrate with {url} (password {url.split(':')[2].split('@')[0]})")
"""


def _role(pg_server: PgServer, pg_url: str, password: str) -> str:
    """A login role with ``password`` owning the test database; returns its async URL."""
    import psycopg
    from psycopg import sql

    role = f"r_{uuid.uuid4().hex[:10]}"
    admin = make_url(pg_server.admin_url).set(drivername="postgresql")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        conn.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(make_url(pg_url).database), sql.Identifier(role)
            )
        )
    db = make_url(pg_url)
    return (
        f"postgresql+asyncpg://{role}:{quote(password, safe='')}@{db.host}:{db.port}/{db.database}"
    )


def _armor_lines(text: str) -> list[str]:
    """The armor lines and every body line of an armored block (not blank lines or
    short headers, which could match by chance)."""
    return [line for line in text.splitlines() if line.startswith("-----") or len(line) >= 16]


def _needles(*secrets: str) -> set[str]:
    out = set()
    for secret in secrets:
        # Raw; percent-encoded as in a URL typed by hand; as a form value; and as
        # SQLAlchemy renders a URL's password (spaces and "+" left as they are).
        out |= {secret, quote(secret, safe=""), quote(secret), quote_plus(secret),
                quote(secret, safe=" +")}  # fmt: skip
    return out


class Runs:
    """Every run's command, status and output, for one scan at the end."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd
        self.log: list[tuple[str, int | None, str]] = []

    def __call__(self, *args: str, expect: int | set[int], **env: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "portal_boot", *args],
            env={**self.env, **env}, cwd=self.cwd, capture_output=True, text=True, timeout=120,
            check=False,
        )  # fmt: skip
        output = result.stdout + result.stderr
        self.log.append((" ".join(args), result.returncode, output))
        allowed = {expect} if isinstance(expect, int) else expect
        assert result.returncode in allowed, (args, result.returncode, output[-3000:])
        return output

    def many(self, *cases: tuple[tuple[str, ...], int | set[int], dict[str, str]]) -> None:
        """Independent runs (args, expected status, environment), a few at a time."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:
            for future in [pool.submit(self, *args, expect=expect, **env)
                           for args, expect, env in cases]:  # fmt: skip
                future.result()

    def serving(self, command: str, port: int, **env: str) -> str:
        """Boot to HTTP, then stop uvicorn: the whole output of a successful start."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "portal_boot", command],
            env={**self.env, **env, "PORTAL_BOOT_PORT": str(port)}, cwd=self.cwd,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_http(f"http://127.0.0.1:{port}/health", proc)
        finally:
            out, err = stop(proc)
        self.log.append((command, 0, out + err))
        return out + err


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_every_command_at_debug_level_never_prints_a_secret(
    log_format: str,
    tmp_path: Path,
    pg_server: PgServer,
    pg_url: str,
    gpg_keys: gpgkeys.KeySet,
    clean_env: dict[str, str],
) -> None:
    url = _role(pg_server, pg_url, PASSWORD)
    wrong = url.replace(quote(PASSWORD, safe=""), quote(WRONG, safe=""))
    db = make_url(url)
    unreachable = url.replace(f":{db.port}/", f":{free_port()}/")
    keys = trusted_key_file(gpg_keys.good, tmp_path / "trusted.asc")
    secret_key = tmp_path / "secret.asc"
    secret_key.write_bytes(
        gpg_keys.lab.gpg("--armor", "--export-secret-keys", gpg_keys.good.fingerprint).stdout
    )
    wheels = signed_wheel_folder(tmp_path / "wheels", gpg_keys.good, extra=1)
    tampered = signed_wheel_folder(tmp_path / "tampered", gpg_keys.good, audit=False, extra=1)
    for wheel in tampered.glob("*.whl"):
        wheel.write_bytes(wheel.read_bytes() + b"\0")
    leaky = tmp_path / "leaky-target"
    install_plugin(leaky, "leaky_plugin", {
        "leaky_0001.py": revision("leaky_0001", None, labels=["leaky"], depends_on="core_0002",
                                  upgrade=LEAKY),
    })  # fmt: skip
    url_file = tmp_path / "database-url"
    url_file.write_text(url + "\n")
    # Half the runs read the URL from a *_FILE secret, as Kubernetes mounts it.
    via = {"DATABASE_URL_FILE": str(url_file)} if log_format == "json" else {"DATABASE_URL": url}
    env = {
        **clean_env,
        **via,
        "PORTAL_BOOT_LOG_LEVEL": "debug",
        "PORTAL_BOOT_LOG_FORMAT": log_format,
        "PORTAL_BOOT_WHEEL_DIR": str(wheels),
        "PORTAL_BOOT_TRUSTED_KEYS": str(keys),
        "PORTAL_BOOT_TARGET": str(tmp_path / "state" / "plugins"),
        "PORTAL_BOOT_ALEMBIC_CONFIG": str(PORTAL / "alembic.ini"),
        "PORTAL_BOOT_HOST": "127.0.0.1",
        "PORTAL_BOOT_DB_TIMEOUT": "2",
    }
    run = Runs(env, PORTAL)
    bad_url = {"PORTAL_BOOT_DATABASE_URL": wrong}
    nowhere = {"PORTAL_BOOT_DATABASE_URL": unreachable}
    malformed = {"PORTAL_BOOT_DATABASE_URL": url.replace(f":{db.port}/", ":port/")}

    # Failing first, on an empty state (none of them changes it; the one that
    # installs before it fails has a target of its own); then succeeding, in order.
    elsewhere = {"PORTAL_BOOT_TARGET": str(tmp_path / "elsewhere" / "plugins")}
    run.many(
        (("db-url",), 2, malformed),
        (("verify",), 3, {"PORTAL_BOOT_WHEEL_DIR": str(tampered)}),
        (("verify",), 3, {"PORTAL_BOOT_TRUSTED_KEYS": str(secret_key)}),
        (("install",), 3, {"PORTAL_BOOT_TRUSTED_KEYS": str(secret_key)}),
        (("install",), 3, {"PORTAL_BOOT_WHEEL_DIR": str(tampered)}),
        (("wait-db",), 5, bad_url),
        (("wait-db",), 5, nowhere),
        (("wait-db",), 2, malformed),
        (("migrate",), 5, bad_url),
        (("migrate",), 6, {"PORTAL_BOOT_TARGET": str(leaky)}),
        (("status",), 3, {"PORTAL_BOOT_WHEEL_DIR": str(tampered)}),
        (("status", "--json"), 4, bad_url),  # install pending comes first; the database too
        (("status", "--json"), 4, nowhere),
        (("serve", "--wait-for-migrations"), 6, {"PORTAL_BOOT_DB_TIMEOUT": "1"}),
        (("serve", "--wait-for-migrations"), 5, bad_url),
        (("run",), 5, {**bad_url, **elsewhere}),
        (("run",), 3, {"PORTAL_BOOT_TRUSTED_KEYS": str(secret_key)}),
    )

    run("db-url", expect=0)
    run("verify", expect=0)
    run("install", expect=0)
    run("wait-db", expect=0)
    run("status", expect=6)
    run("migrate", "--sql", expect=0)
    run("migrate", expect=0)
    run("status", expect=0)
    run("status", "--json", expect=0)
    run("migrate", "--to", "audit@base", expect=0)
    run.serving("run", free_port())
    run.serving("serve", free_port())
    # Past the exec: uvicorn cannot bind, and says so in its own words.
    run("serve", "--wait-for-migrations", expect={2, 3}, PORTAL_BOOT_HOST="256.0.0.1",
        PORTAL_BOOT_PORT=str(free_port()))  # fmt: skip

    secrets = _needles(PASSWORD, WRONG, pg_server.password)
    key_lines = _armor_lines(keys.read_text()) + _armor_lines(secret_key.read_text())
    assert any("PRIVATE KEY BLOCK" in line for line in key_lines)
    leaks = []

    def leak(command: str, status: int | None, what: str, output: str, needle: str) -> None:
        at = output.find(needle)
        leaks.append((command, status, what, output[max(0, at - 200) : at + len(needle) + 40]))

    for command, status, output in run.log:
        for needle in secrets:
            if needle and needle in output:
                leak(command, status, "the password", output, needle)
        for line in key_lines:
            if line in output:
                leak(command, status, "key material", output, line)
        for header in ("BEGIN PGP", "PRIVATE KEY"):
            if header in output:
                leak(command, status, "an armor header", output, header)
    assert not leaks, leaks
    # The scan saw what it should: debug output, in the format asked for, and the
    # failures that tempt a leak really happened.
    everything = "\n".join(output for _, _, output in run.log)
    if log_format == "json":
        assert '"level": "debug"' in everything
        for _, _, output in run.log:
            for line in output.splitlines():
                if line.startswith("{") and '"level"' in line:
                    json.loads(line)
    else:
        assert " DEBUG " in everything
    assert "password authentication failed" in everything
    assert "revision leaky_0001" in everything and "cannot migrate with" in everything
    assert "holds a secret key" in everything
