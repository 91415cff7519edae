"""A real PgBouncer in front of the session's PostgreSQL (tests/pgserver.py).

Debian's ``pgbouncer`` binary (scripts/test.sh installs the package; its own service
plays no part), started by the tests with an ini of their own in a folder under
``/tmp``: as root it runs as the ``postgres`` user (PgBouncer refuses root), on a
free port on 127.0.0.1. Transaction pooling with a small pool, the settings the
deployment guides' poolers use: ``ignore_startup_parameters = extra_float_digits``,
SCRAM authentication with the test password from a userlist, no reset query.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from pgserver import _chown_to_postgres, as_postgres, free_port
from sqlalchemy.engine import make_url


def binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )


class PgBouncer:
    """One PgBouncer process; :meth:`url` turns a database URL of the server into
    the same database through the pooler."""

    def __init__(self, server_url: str, password: str, *, pool_mode: str = "transaction",
                 pool_size: int = 3) -> None:  # fmt: skip
        found = binary()
        if found is None:
            raise RuntimeError("pgbouncer is not installed (scripts/test.sh installs it)")
        server = make_url(server_url)
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="portal-boot-pgbouncer-", dir="/tmp"))
        os.chmod(self.base, 0o755)
        user = server.username or "postgres"
        (self.base / "userlist.txt").write_text(f'"{user}" "{password}"\n')
        (self.base / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={server.host or '127.0.0.1'} port={server.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = scram-sha-256\nauth_file = {self.base / 'userlist.txt'}\n"
            f"pool_mode = {pool_mode}\ndefault_pool_size = {pool_size}\n"
            "max_client_conn = 500\nmax_db_connections = 0\n"
            "ignore_startup_parameters = extra_float_digits\n"
            "server_reset_query =\n"
            f"logfile = {self.base / 'pgbouncer.log'}\npidfile = {self.base / 'pgbouncer.pid'}\n"
        )
        os.chmod(self.base / "userlist.txt", 0o600)
        _chown_to_postgres(self.base)
        self.process = subprocess.Popen(
            as_postgres([found, str(self.base / "pgbouncer.ini")]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                break
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not start: {self.log()}")
            time.sleep(0.05)

    def url(self, database_url: str) -> str:
        return (
            make_url(database_url)
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )

    def log(self) -> str:
        try:
            return (self.base / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        if self.process.poll() is None:
            pid_file = self.base / "pgbouncer.pid"
            # runuser does not pass every signal on: signal pgbouncer itself.
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text().split()[0]), 15)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.base, ignore_errors=True)
