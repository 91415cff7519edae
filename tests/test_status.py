"""`portal-boot status`: what is there and what is pending, and its exit status."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import portal_boot
from conftest import REPO
from pgserver import free_port
from wheels import SigningKeys, plugin_wheels, signed_folder, signing_keys  # noqa: F401

PORTAL = REPO / "examples" / "portal"


def _env(clean_env, tmp_path: Path, url: str, keys: SigningKeys, folder: Path) -> dict[str, str]:
    return {
        **clean_env,
        "PORTAL_BOOT_DATABASE_URL": url,
        "PORTAL_BOOT_ALEMBIC_CONFIG": str(PORTAL / "alembic.ini"),
        "PORTAL_BOOT_TARGET": str(tmp_path / "state" / "plugins"),
        "PORTAL_BOOT_WHEEL_DIR": str(folder),
        "PORTAL_BOOT_TRUSTED_KEYS": str(keys.trusted),
    }


def test_status_follows_the_pipeline(tmp_path, clean_env, pg_url, plugin_wheels, signing_keys):  # noqa: F811
    folder = signed_folder(tmp_path / "wheels", plugin_wheels.alpha_v1, key=signing_keys.good)
    env = _env(clean_env, tmp_path, pg_url, signing_keys, folder)

    # Nothing installed yet: install is pending (4).
    result = portal_boot("status", "--json", env=env)
    report = json.loads(result.stdout)
    assert result.returncode == 4, result.stderr
    assert report["wheels"][0]["state"] == "valid"
    assert report["install_pending"] is True

    assert portal_boot("install", env=env).returncode == 0
    # Installed; the database is empty: migrations are pending (6).
    result = portal_boot("status", "--json", env=env)
    report = json.loads(result.stdout)
    assert result.returncode == 6, result.stderr
    assert [(p["name"], p["enabled"]) for p in report["plugins"]] == [("AlphaPluginConfiguration", True)]
    assert report["database"]["reachable"] is True
    assert "core_0001" in report["revisions"]["pending"]

    assert portal_boot("migrate", env=env).returncode == 0
    result = portal_boot("status", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing pending" in result.stdout
    assert "core_0002" in result.stdout


def test_status_flags_a_tampered_wheel(tmp_path, clean_env, pg_url, plugin_wheels, signing_keys):  # noqa: F811
    folder = signed_folder(tmp_path / "wheels", plugin_wheels.alpha_v1, key=signing_keys.good)
    wheel = next(folder.glob("*.whl"))
    wheel.write_bytes(wheel.read_bytes() + b"tampered")
    result = portal_boot("status", "--json", env=_env(clean_env, tmp_path, pg_url, signing_keys, folder))
    assert result.returncode == 3
    assert json.loads(result.stdout)["wheels"][0]["state"] == "bad signature"


def test_status_database_unreachable(tmp_path, clean_env, plugin_wheels, signing_keys):  # noqa: F811
    folder = signed_folder(tmp_path / "wheels", plugin_wheels.alpha_v1, key=signing_keys.good)
    url = f"postgresql://u:secretpw@127.0.0.1:{free_port()}/x"
    env = _env(clean_env, tmp_path, url, signing_keys, folder)
    assert portal_boot("install", env=env).returncode == 0
    result = portal_boot("status", "--json", env=env)
    assert result.returncode == 5, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["database"]["reachable"] is False
    assert "secretpw" not in result.stdout + result.stderr
    assert report["database"]["url"] == f"postgresql+psycopg://u:***@127.0.0.1:{url.rsplit(':', 1)[1]}"


def test_status_without_plugins_on_sqlite(tmp_path, clean_env):
    db = tmp_path / "p.db"
    env = {
        **clean_env,
        "PORTAL_BOOT_DATABASE_URL": f"sqlite:///{db}",
        "PORTAL_BOOT_ALEMBIC_CONFIG": str(PORTAL / "alembic.ini"),
        "PORTAL_BOOT_TARGET": str(tmp_path / "plugins"),
    }
    assert portal_boot("status", env=env).returncode == 6
    assert portal_boot("migrate", env=env).returncode == 0
    result = portal_boot("status", env=env)
    assert result.returncode == 0, result.stdout
    assert "none" in result.stdout.split("installed plugins")[1].splitlines()[1]


def test_unsigned_generation_is_not_served_when_signatures_are_required(
    tmp_path, clean_env, plugin_wheels  # noqa: F811
):
    folder = signed_folder(tmp_path / "wheels", plugin_wheels.alpha_v1, key=None)
    target = tmp_path / "state" / "plugins"
    base = {
        **clean_env,
        "PORTAL_BOOT_DATABASE_URL": f"sqlite:///{tmp_path}/p.db",
        "PORTAL_BOOT_ALEMBIC_CONFIG": str(PORTAL / "alembic.ini"),
        "PORTAL_BOOT_TARGET": str(target),
    }
    installed = portal_boot("install", "--wheel-dir", str(folder), "--signatures", "off", env=base)
    assert installed.returncode == 0, installed.stderr
    # Later boots without the folder (serve-only replicas) must not import it silently.
    result = portal_boot("serve", "--port", str(free_port()), env=base, timeout=30)
    assert result.returncode == 3, result.stderr
    assert "installed with signatures off" in result.stderr.splitlines()[-1]
    assert portal_boot("status", env=base).returncode == 3


def test_plugins_in_the_image_itself_are_discovered(tmp_path, clean_env, plugin_wheels):  # noqa: F811
    """The deployment guides also pip-install plugins into the image: portal-boot must
    see them (and migrate them) as uvicorn will."""
    import zipfile

    image_site = tmp_path / "image-site"
    with zipfile.ZipFile(plugin_wheels.beta) as wheel:
        wheel.extractall(image_site)
    env = {
        **clean_env,
        "PYTHONPATH": str(image_site),
        "PORTAL_BOOT_DATABASE_URL": f"sqlite:///{tmp_path}/p.db",
        "PORTAL_BOOT_ALEMBIC_CONFIG": str(PORTAL / "alembic.ini"),
        "PORTAL_BOOT_TARGET": str(tmp_path / "plugins"),
        "ENABLED_PLUGINS": "BetaPluginConfiguration",
    }
    result = portal_boot("status", "--json", env=env)
    report = json.loads(result.stdout)
    assert [p["name"] for p in report["plugins"]] == ["BetaPluginConfiguration"], result.stderr
