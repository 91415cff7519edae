"""Issue 12.3: removing the last plugin. ``--no-plugins`` / ``PORTAL_BOOT_NO_PLUGINS``
installs an empty generation; an empty or missing wheel folder stays an error that
changes nothing. Through the CLI, with a real signed wheel and a real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import gpgkeys
import pytest
from boot_support import PORTAL, signed_wheel_folder, trusted_key_file, version_rows
from cli_helpers import assert_one_line_failure, portal_boot


@pytest.fixture
def installed(tmp_path: Path, gpg_keys: gpgkeys.KeySet, clean_env: dict[str, str]) -> dict[str, Path]:
    folder = signed_wheel_folder(tmp_path / "wheels", gpg_keys.good)
    keys = trusted_key_file(gpg_keys.good, tmp_path / "trusted.asc")
    target = tmp_path / "state" / "plugins"
    target.parent.mkdir()
    result = portal_boot(
        "install", "--wheel-dir", str(folder), "--target", str(target), "--trusted-keys",
        str(keys), env=clean_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {"wheels": folder, "keys": keys, "target": target}


def _status(target: Path, env: dict[str, str], *more: str) -> tuple[int, dict]:
    result = portal_boot(
        "status", "--json", "--target", str(target), "--alembic-config",
        str(PORTAL / "alembic.ini"), *more, env=env,
    )  # fmt: skip
    return result.returncode, json.loads(result.stdout)


def test_the_last_plugin_is_removed_explicitly_and_only_explicitly(
    installed: dict[str, Path], pg_url: str, clean_env: dict[str, str], tmp_path: Path
) -> None:
    target = installed["target"]
    env = {**clean_env, "PORTAL_BOOT_DATABASE_URL": pg_url}
    migrated = portal_boot(
        "migrate", "--target", str(target), "--alembic-config", str(PORTAL / "alembic.ini"),
        env=env,
    )  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    before = target.resolve()

    # An empty wheel folder (a volume that did not mount) changes nothing.
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = portal_boot("install", "--wheel-dir", str(empty), "--target", str(target), env=env)
    assert_one_line_failure(refused, 2, "no wheels", "--no-plugins")
    assert target.resolve() == before
    # Neither does an unset folder: the installed generation stays.
    unset = portal_boot("install", "--target", str(target), env=env)
    assert unset.returncode == 0 and target.resolve() == before
    # --no-plugins with a wheel folder is contradictory.
    both = portal_boot(
        "install", "--no-plugins", "--wheel-dir", str(installed["wheels"]), "--target",
        str(target), env=env,
    )  # fmt: skip
    assert_one_line_failure(both, 2, "--no-plugins", "--wheel-dir")
    assert target.resolve() == before

    # The removal procedure: downgrade the plugin's branch, then install no plugins.
    down = portal_boot(
        "migrate", "--to", "audit@base", "--target", str(target), "--alembic-config",
        str(PORTAL / "alembic.ini"), env=env,
    )  # fmt: skip
    assert down.returncode == 0, down.stderr
    code, report = _status(target, {**env, "PORTAL_BOOT_NO_PLUGINS": "true"})
    assert code == 4 and report["install_pending"] is True
    removed = portal_boot("install", "--target", str(target), env={**env, "PORTAL_BOOT_NO_PLUGINS": "true"})
    assert removed.returncode == 0, removed.stderr
    assert "empty generation" in removed.stderr and "kept for rollback" in removed.stderr
    assert target.resolve() != before and before.is_dir()  # the previous one, for rollback
    code, report = _status(target, {**env, "PORTAL_BOOT_NO_PLUGINS": "true"})
    assert code == 0, report
    assert report["plugins"] == []
    # Again: a no-op. And the next boot's migrate has nothing of the plugin to do.
    again = portal_boot("install", "--no-plugins", "--target", str(target), env=env)
    assert again.returncode == 0 and "already empty" in again.stderr
    code, report = _status(target, env)
    assert code == 0, report
    assert version_rows(pg_url) == {"core_0002"}
