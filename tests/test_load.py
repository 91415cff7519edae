"""Load: 8 and 16 replicas run ``portal-boot run`` at the same moment against one
fresh PostgreSQL database, as the pods of one Deployment do.

Like pods, each replica has its own plugin target (an emptyDir) and its own port,
and all of them read the same signed wheel folder (a volume). The plugin's first
revision sleeps in the database, so the replicas that start while it runs must
wait for the migration lock. Every replica must end up serving HTTP, with the plugin
discoverable; every revision must be applied exactly once (the plugin's revisions
write a row each time they run); the waits for the lock must be in the logs.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import gpgkeys
import pytest
from boot_support import (
    AUDIT_REVISIONS,
    AUDIT_TABLES,
    CORE_TABLES,
    PORTAL,
    SLEEP_VAR,
    advisory_locks,
    applied,
    boot_env,
    figure,
    portal_boot_argv,
    signed_wheel_folder,
    tables_now,
    trusted_key_file,
    version_rows,
)
from cli_helpers import free_http_get
from pgserver import PgServer, free_port
from test_migrations_support import query
from test_run import stop

# How long the plugin's first revision holds the lock: long enough that replicas
# starting on a busy machine still find it held.
MIGRATION_SECONDS = 2.0


def _serving(port: int) -> dict | None:
    try:
        status, body = free_http_get(f"http://127.0.0.1:{port}/health/plugins", timeout=1)
    except OSError:
        return None
    return json.loads(body) if status == 200 else None


@pytest.mark.parametrize(
    "replicas", [8, pytest.param(16, marks=pytest.mark.slow)], ids=["8-replicas", "16-replicas"]
)
def test_replicas_booting_at_once_all_serve_and_apply_each_revision_once(
    replicas: int,
    tmp_path: Path,
    pg_server: PgServer,
    gpg_keys: gpgkeys.KeySet,
    clean_env: dict[str, str],
) -> None:
    url = pg_server.create_database()
    wheels = signed_wheel_folder(tmp_path / "wheels", gpg_keys.good)
    keys = trusted_key_file(gpg_keys.good, tmp_path / "trusted.asc")
    ports = [free_port() for _ in range(replicas)]
    procs: list[subprocess.Popen[str]] = []
    started = time.monotonic()
    try:
        for i, port in enumerate(ports):
            env = boot_env(
                clean_env, url=url.replace("postgresql+psycopg", "postgresql+asyncpg"),
                target=tmp_path / f"pod-{i}" / "plugins", wheel_dir=wheels, keys=keys,
                port=port, PORTAL_BOOT_LOCK_TIMEOUT="120", PORTAL_BOOT_DB_TIMEOUT="60",
                **{SLEEP_VAR: str(MIGRATION_SECONDS)},
            )  # fmt: skip
            (tmp_path / f"pod-{i}").mkdir()
            proc = subprocess.Popen(
                portal_boot_argv("run"), env=env, cwd=PORTAL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            procs.append(proc)
        served: dict[int, float] = {}
        deadline = time.monotonic() + 180
        while len(served) < replicas and time.monotonic() < deadline:
            for i, (proc, port) in enumerate(zip(procs, ports)):
                if i in served:
                    continue
                assert proc.poll() is None, (
                    f"replica {i} exited {proc.returncode}: {proc.communicate()}"
                )
                payload = _serving(port)
                if payload is not None:
                    assert [p["name"] for p in payload["plugins"]] == ["AuditPluginConfiguration"]
                    served[i] = time.monotonic() - started
            time.sleep(0.05)
        # The migration is over (everybody serves): nobody holds the lock any more.
        assert advisory_locks(url) == []
    finally:
        outputs = [stop(proc)[1] for proc in procs]
    assert len(served) == replicas, f"{len(served)}/{replicas} served:\n" + "\n".join(outputs)

    log = applied(url)
    assert log == sorted(AUDIT_REVISIONS), f"applications recorded: {log}"
    assert version_rows(url) == {"audit_0002"}
    assert tables_now(url) == CORE_TABLES | AUDIT_TABLES
    # Who applied what: one replica, and the others said why they did not.
    appliers = [out for out in outputs if "applied audit_0001" in out]
    waited = [out for out in outputs if "waiting for the migration lock, held by pid" in out]
    after_wait = [out for out in outputs if "nothing left to apply" in out]
    at_heads = [  # started after it: the database was already at the heads
        out for out in outputs
        if re.search(r"database at (the )?heads", out) and out not in after_wait + appliers
    ]  # fmt: skip
    assert len(appliers) == 1
    assert [out for out in outputs if "applied core_0001" in out] == appliers
    assert waited, "no replica waited for the lock: the test did not exercise it"
    assert len(appliers) + len(after_wait) + len(at_heads) == replicas
    waits = [
        float(m)
        for out in waited
        for m in re.findall(r"migration lock taken after ([\d.]+) s", out)
    ]
    boots = [int(m) for out in outputs for m in re.findall(r"boot: ready in (\d+) ms", out)]
    holders = query(url, "SELECT count(DISTINCT pid) FROM applied_log")
    figure(
        f"{replicas} replicas at once on one database: {len(served)} served, "
        f"{len(log) - len(AUDIT_REVISIONS)} duplicate applications (each of "
        f"{len(AUDIT_REVISIONS) + 2} revisions applied once, by {holders[0]} replica); "
        f"{len(waited)} waited for the lock (logged, up to {max(waits, default=0):.1f} s), "
        f"{len(after_wait)} then found nothing left, {len(at_heads)} started after it; "
        f"all serving {max(served.values()):.1f} s after the first start "
        f"(boot to exec: {min(boots) / 1000:.1f}-{max(boots) / 1000:.1f} s)"
    )
