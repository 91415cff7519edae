"""A real PostgreSQL for the tests, found or made in this order:

1. ``PORTAL_BOOT_TEST_DATABASE_URL``: an existing server (a superuser URL; each test
   gets its own database on it). Tests that stop or restart the server are skipped.
2. testcontainers, when a Docker engine answers.
3. A throwaway cluster from the local PostgreSQL binaries (``pg_config --bindir``),
   on a free port on 127.0.0.1. ``initdb``/``postgres`` refuse to run as root, so as
   root they run as the ``postgres`` user (``runuser``), with a data folder under
   ``/tmp`` that this user owns: pytest's ``tmp_path`` is under a root-only folder.

Clusters of kind 3 are cheap to multiply: ``initdb`` runs once per session and later
clusters copy its data folder, so a test can own a server it stops and starts.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

PASSWORD_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bindir() -> Path:
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise RuntimeError("no PostgreSQL binaries found: install postgresql (initdb, postgres)")


def as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


def _chown_to_postgres(path: Path) -> None:
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam("postgres")
    for root, dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)


def wait_ready(url: str, timeout: float = 30.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class LocalCluster:
    """A PostgreSQL cluster in a folder of its own, run as a child process."""

    _template: Path | None = None
    password: str = ""

    def __init__(self, port: int | None = None) -> None:
        self.bindir = _bindir()
        self.port = port or free_port()
        self.base = Path(tempfile.mkdtemp(prefix="portal-boot-pg-", dir="/tmp"))
        os.chmod(self.base, 0o755)
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._init_data()
        # The template's password, kept per cluster in case the template is remade.
        self.password = type(self).password

    @classmethod
    def _make_template(cls) -> Path:
        if cls._template is not None and cls._template.exists():
            return cls._template
        cls.password = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(20))
        base = Path(tempfile.mkdtemp(prefix="portal-boot-pgtemplate-", dir="/tmp"))
        os.chmod(base, 0o755)
        pwfile = base / "pwfile"
        pwfile.write_text(cls.password + "\n")
        _chown_to_postgres(base)
        subprocess.run(
            as_postgres([
                str(_bindir() / "initdb"), "-D", str(base / "data"), "-U", "postgres",
                "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync",
                "--locale=C",
            ]),
            check=True, capture_output=True,
        )  # fmt: skip
        pwfile.unlink()
        cls._template = base / "data"
        return cls._template

    @classmethod
    def remove_template(cls) -> None:
        if cls._template is not None:
            shutil.rmtree(cls._template.parent, ignore_errors=True)
            cls._template = None

    def _init_data(self) -> None:
        template = self._make_template()
        shutil.copytree(template, self.data, symlinks=True)
        os.chmod(self.data, 0o700)
        _chown_to_postgres(self.base)

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres:{self.password}@127.0.0.1:{self.port}/postgres"

    def start(self, wait: bool = True) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        with open(self.log, "ab") as logfile:
            self.process = subprocess.Popen(
                as_postgres([
                    str(self.bindir / "postgres"), "-D", str(self.data),
                    "-c", "listen_addresses=127.0.0.1", "-p", str(self.port),
                    "-c", f"unix_socket_directories={self.base}",
                    "-c", "fsync=off", "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off", "-c", "max_connections=200",
                ]),
                stdout=logfile, stderr=subprocess.STDOUT,
            )  # fmt: skip
        if wait:
            wait_ready(self.admin_url)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (SIGINT, rolls back and disconnects clients) or
        ``immediate`` (SIGQUIT, like a crash)."""
        if self.process is None or self.process.poll() is not None:
            return
        import signal

        sig = signal.SIGINT if mode == "fast" else signal.SIGQUIT
        # runuser does not pass every signal on: signal the postmaster itself.
        pid = self.postmaster_pid()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        else:
            self.process.send_signal(sig)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


class PgServer:
    """The session's server: ``admin_url`` is a superuser sync URL."""

    def __init__(self) -> None:
        self.cluster: LocalCluster | None = None
        self._container = None
        self.mode = ""
        external = os.environ.get("PORTAL_BOOT_TEST_DATABASE_URL")
        if external:
            self.mode = "external"
            self.admin_url = external
            from sqlalchemy.engine import make_url

            self.password = make_url(external).password or ""
        elif self._try_container():
            self.mode = "testcontainers"
        else:
            self.mode = "local"
            self.cluster = LocalCluster()
            self.cluster.start()
            self.admin_url = self.cluster.admin_url
            self.password = self.cluster.password

    def _try_container(self) -> bool:
        if os.environ.get("PORTAL_BOOT_TEST_NO_DOCKER"):
            return False
        try:
            import docker

            client = docker.from_env(timeout=3)
            client.ping()
        except Exception:
            return False
        from testcontainers.postgres import PostgresContainer

        password = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(20))
        container = PostgresContainer("postgres:16", password=password, driver="psycopg")
        container.start()
        self._container = container
        self.password = password
        self.admin_url = container.get_connection_url()
        return True

    def create_database(self) -> str:
        """A new empty database; returns its sync URL."""
        import psycopg
        from sqlalchemy.engine import make_url

        name = f"t_{uuid.uuid4().hex[:12]}"
        admin = make_url(self.admin_url)
        conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return admin.set(database=name).render_as_string(hide_password=False)

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.destroy()
        LocalCluster.remove_template()
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.stop()
