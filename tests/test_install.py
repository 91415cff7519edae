"""``portal-boot install`` from a wheel folder, through the CLI: real wheels, real gpg
keys, the real installer; the target's whole tree is hashed to prove a refused
install changed nothing."""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gpgkeys
import pytest
import wheels
from cli_helpers import assert_one_line_failure, portal_boot
from wheels import GROUP, MISSING_REQUIREMENT, SigningKeys, build_wheel, signed_folder

from portal_boot import wheels as installer
from portal_boot.errors import InstallError
from portal_boot.plugins import discover
from portal_boot.settings import Settings
from portal_boot.wheels.installer import InstallResult

# Session fixtures shared by the install tests (built once: wheels, gpg keys).
plugin_wheels = wheels.plugin_wheels
signing_keys = wheels.signing_keys


def install(folder: Path, target: Path, keys: SigningKeys, env: dict[str, str], *extra: str):
    return portal_boot(
        "install", "--wheel-dir", str(folder), "--target", str(target),
        "--trusted-keys", str(keys.trusted), *extra, env=env,
    )  # fmt: skip


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its type and content (or link target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def resign(key: gpgkeys.Key, wheel: Path, note: str) -> Path:
    """A new ``.asc`` for ``wheel`` by ``key`` whose bytes surely differ from any other:
    a notation makes it unique (ed25519 signatures made in the same second are equal)."""
    key.lab.gpg(
        "--yes", "--local-user", f"{key.signing_fingerprint}!", "--armor",
        "--set-notation", f"note@portal-boot.test={note}",
        "--detach-sign", "--output", f"{wheel}.asc", str(wheel),
    )  # fmt: skip
    return wheel.with_name(wheel.name + ".asc")


def imported(target: Path, module: str, env: dict[str, str]) -> str:
    """``module.__version__`` as a fresh interpreter sees it with the target on its path."""
    code = f"import sys; sys.path.append({str(target)!r}); import {module}; print({module}.__version__)"
    result = subprocess.run(
        [sys.executable, "-I", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def target(tmp_path: Path) -> Path:
    (tmp_path / "volume").mkdir()
    return tmp_path / "volume" / "plugins"


@pytest.fixture
def installed(tmp_path, target, plugin_wheels, signing_keys, clean_env) -> Path:
    """A target holding alpha 1.0.0: the previous generation of the tests below."""
    folder = signed_folder(tmp_path / "v1", plugin_wheels.alpha_v1, key=signing_keys.good)
    result = install(folder, target, signing_keys, clean_env)
    assert result.returncode == 0, result.stderr
    return installer.current_generation(target)


def test_install_makes_plugins_importable_and_discoverable(
    tmp_path, target, plugin_wheels, signing_keys, clean_env
):
    folder = signed_folder(
        tmp_path / "w", plugin_wheels.alpha_v1, plugin_wheels.beta, key=signing_keys.good
    )
    result = install(folder, target, signing_keys, clean_env)
    assert result.returncode == 0, result.stderr
    assert target.is_symlink() and not os.path.isabs(os.readlink(target))
    generation = installer.current_generation(target)
    assert generation is not None and generation.parent.name == ".plugins.generations"
    assert imported(target, "alpha_plugin", clean_env) == "1.0.0"
    # Compiled once at install time, for the interpreter that will import it.
    assert (
        target / "alpha_plugin" / "__pycache__" / f"schema.{sys.implementation.cache_tag}.pyc"
    ).is_file()
    plugins = {p.name: p for p in discover([target], GROUP)}
    assert set(plugins) == {"AlphaPluginConfiguration", "BetaPluginConfiguration"}
    assert (
        plugins["AlphaPluginConfiguration"].migrations_dir == target / "alpha_plugin" / "migration"
    )
    fpr = signing_keys.good.fingerprint
    assert (
        f"portal-alpha-plugin 1.0.0 (portal_alpha_plugin-1.0.0-py3-none-any.whl) signed by {fpr}"
        in result.stderr
    )
    assert "install: 2 wheels into generation" in result.stderr


def test_same_wheels_again_is_a_no_op(tmp_path, target, installed, signing_keys, clean_env):
    before = tree(target.parent)
    # A copy elsewhere: the same bytes (wheels, signatures, keys) are what make it the same set.
    folder = shutil.copytree(tmp_path / "v1", tmp_path / "again")
    result = install(folder, target, signing_keys, clean_env, "--log-level", "debug")
    assert result.returncode == 0, result.stderr
    assert f"(no gpg run): generation {installed.name} already holds" in result.stderr
    assert "staging into" not in result.stderr  # nothing copied (tests/test_install_warm.py)
    assert "unpacking" not in result.stderr  # the installer never ran
    assert tree(target.parent) == before  # nothing compiled, nothing written


def test_same_wheels_with_fresh_signatures_is_a_verified_no_op(
    tmp_path, target, installed, plugin_wheels, signing_keys, clean_env
):
    before = tree(target.parent)
    folder = signed_folder(tmp_path / "again", plugin_wheels.alpha_v1, key=None)
    resign(signing_keys.good, folder / plugin_wheels.alpha_v1.name, "fresh")
    result = install(folder, target, signing_keys, clean_env, "--log-level", "debug")
    assert result.returncode == 0, result.stderr
    assert "staging and verifying: the signatures, keys" in result.stderr
    assert f"no-op, same wheels: generation {installed.name}" in result.stderr
    assert "unpacking" not in result.stderr  # the installer never ran
    # Only the state changed: it records the verification of the new signature.
    after = tree(target.parent)
    state = str(Path(".plugins.generations", installed.name, ".portal-boot.json"))
    assert {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)} == {state}


def test_upgrade_replaces_the_old_version_and_keeps_one_previous_generation(
    tmp_path, target, installed, plugin_wheels, signing_keys, clean_env
):
    v2 = signed_folder(tmp_path / "v2", plugin_wheels.alpha_v2, key=signing_keys.good)
    assert install(v2, target, signing_keys, clean_env).returncode == 0
    # A fresh generation: no stale 1.0.0 dist-info beside the new one (pypa/pip#8063).
    assert sorted(p.name for p in target.glob("*.dist-info")) == [
        "portal_alpha_plugin-2.0.0.dist-info"
    ]
    assert imported(target, "alpha_plugin", clean_env) == "2.0.0"
    home = target.parent / ".plugins.generations"
    assert installed.is_dir()  # the previous generation stays until the next install
    beta = signed_folder(tmp_path / "beta", plugin_wheels.beta, key=signing_keys.good)
    assert install(beta, target, signing_keys, clean_env).returncode == 0
    assert not installed.exists()
    assert len([p for p in home.iterdir() if not p.name.startswith(".")]) == 2


def test_status_sees_a_pending_install(tmp_path, target, installed, plugin_wheels):
    folder = signed_folder(tmp_path / "s", plugin_wheels.alpha_v1, key=None)
    settings = Settings(wheel_dir=folder, target=target, signatures="off")
    assert not installer.is_pending(settings)
    signed_folder(folder, plugin_wheels.beta, key=None)
    assert installer.is_pending(settings)


def test_concurrent_installs_of_one_set_build_one_generation(
    tmp_path, target, plugin_wheels, signing_keys, clean_env
):
    folder = signed_folder(
        tmp_path / "w", plugin_wheels.alpha_v1, plugin_wheels.big, key=signing_keys.good
    )
    argv = [sys.executable, "-m", "portal_boot", "install", "--wheel-dir", str(folder),
            "--target", str(target), "--trusted-keys", str(signing_keys.trusted)]  # fmt: skip
    children = [
        subprocess.Popen(argv, env=clean_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    outputs = [child.communicate(timeout=120)[1].decode() for child in children]
    assert [child.returncode for child in children] == [0, 0, 0], outputs
    assert sum("wheels into generation" in out for out in outputs) == 1
    home = target.parent / ".plugins.generations"
    assert [p.name for p in home.iterdir() if not p.name.startswith(".")] == [
        installer.current_generation(target).name
    ]


REFUSALS = {
    # name: (how the folder is made, exit status, words of the error line)
    "tampered": ("tampered", 3, "bad signature"),
    "unsigned": ("unsigned", 3, "missing signature"),
    "unknown key": ("other key", 3, "unknown key"),
    "missing requirement": ("needy", 4, MISSING_REQUIREMENT),
    "corrupt zip": ("corrupt", 4, "corrupt zip"),
    "path escape": ("escape", 4, "'../escaped.py'"),
    "absolute path": ("absolute", 4, "'/tmp/portal-boot-absolute.py'"),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_refused_install_leaves_the_target_exactly_as_it_was(
    case, tmp_path, target, installed, plugin_wheels, signing_keys, clean_env
):
    how, status, words = REFUSALS[case]
    folder = signed_folder(tmp_path / "bad", plugin_wheels.alpha_v2, key=signing_keys.good)
    bad = {
        "tampered": plugin_wheels.beta, "unsigned": plugin_wheels.beta,
        "other key": plugin_wheels.beta, "needy": plugin_wheels.needy,
        "corrupt": plugin_wheels.corrupt, "escape": plugin_wheels.escape,
        "absolute": plugin_wheels.absolute,
    }[how]  # fmt: skip
    key = {"unsigned": None, "other key": signing_keys.other}.get(how, signing_keys.good)
    signed_folder(folder, bad, key=key)
    if how == "tampered":
        with (folder / bad.name).open("ab") as file:
            file.write(b"\0")
    before = tree(target.parent)
    result = install(folder, target, signing_keys, clean_env)
    assert_one_line_failure(result, status, words)
    assert tree(target.parent) == before
    assert imported(target, "alpha_plugin", clean_env) == "1.0.0"
    assert not Path("/tmp/portal-boot-absolute.py").exists()
    assert not (target.parent / "escaped.py").exists()


def test_signatures_off_installs_unsigned_wheels_with_a_warning(
    tmp_path, target, plugin_wheels, clean_env
):
    folder = signed_folder(tmp_path / "w", plugin_wheels.alpha_v1, key=None)
    result = portal_boot(
        "install",
        "--wheel-dir",
        str(folder),
        "--target",
        str(target),
        "--signatures",
        "off",
        env=clean_env,
    )
    assert result.returncode == 0, result.stderr
    assert "SIGNATURE CHECKING IS OFF" in result.stderr
    assert "signed by nobody (signatures off)" in result.stderr
    assert imported(target, "alpha_plugin", clean_env) == "1.0.0"


def test_source_distributions_are_ignored_with_a_warning(
    tmp_path, target, plugin_wheels, signing_keys, clean_env
):
    folder = signed_folder(tmp_path / "w", plugin_wheels.alpha_v1, key=signing_keys.good)
    signed_folder(folder, plugin_wheels.sdist, key=None)
    result = install(folder, target, signing_keys, clean_env)
    assert result.returncode == 0, result.stderr
    assert "ignoring portal-gamma-plugin-1.0.0.tar.gz" in result.stderr
    assert [p.name for p in discover([target], GROUP)] == ["AlphaPluginConfiguration"]


@pytest.mark.parametrize("state", ["missing", "empty", "only an sdist"])
def test_unusable_wheel_folder_is_a_usage_error(
    state, tmp_path, target, plugin_wheels, signing_keys, clean_env
):
    folder = tmp_path / "w"
    if state != "missing":
        folder.mkdir()
    if state == "only an sdist":
        signed_folder(folder, plugin_wheels.sdist, key=None)
    result = install(folder, target, signing_keys, clean_env)
    assert_one_line_failure(result, 2, str(folder), "--wheel-dir / PORTAL_BOOT_WHEEL_DIR")
    assert not target.parent.joinpath(".plugins.generations").exists()


def test_a_folder_portal_boot_did_not_create_is_never_replaced(
    tmp_path, target, plugin_wheels, signing_keys, clean_env
):
    target.mkdir()
    (target / "precious.txt").write_text("user data")
    folder = signed_folder(tmp_path / "w", plugin_wheels.alpha_v1, key=signing_keys.good)
    result = install(folder, target, signing_keys, clean_env)
    assert_one_line_failure(result, 4, "did not create", "--target / PORTAL_BOOT_TARGET")
    assert (target / "precious.txt").read_text() == "user data" and not target.is_symlink()


def test_host_pip_configuration_adds_no_wheel(
    tmp_path, target, plugin_wheels, signing_keys, clean_env
):
    # The host's pip settings point at a folder holding another signed plugin.
    extra = signed_folder(tmp_path / "host-wheels", plugin_wheels.sneaky, key=signing_keys.good)
    pip_conf = tmp_path / "pip.conf"
    pip_conf.write_text(f"[global]\nfind-links = {extra}\nextra-index-url = file://{extra}\n")
    env = {**clean_env, "PIP_FIND_LINKS": str(extra), "PIP_CONFIG_FILE": str(pip_conf),
           "PIP_EXTRA_INDEX_URL": f"file://{extra}"}  # fmt: skip
    folder = signed_folder(tmp_path / "w", plugin_wheels.alpha_v1, key=signing_keys.good)
    result = install(folder, target, signing_keys, env)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in target.glob("*.dist-info")) == [
        "portal_alpha_plugin-1.0.0.dist-info"
    ]
    assert not (target / "sneaky_plugin").exists()


def _wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


@pytest.mark.parametrize("moment", ["staging", "building", "building+0.4s", "building+1s"])
def test_kill_9_during_an_install_leaves_the_previous_generation_in_use(
    moment, tmp_path, target, installed, plugin_wheels, signing_keys, clean_env
):
    folder = signed_folder(
        tmp_path / "v2", plugin_wheels.alpha_v2, plugin_wheels.big, key=signing_keys.good
    )
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**clean_env, "TMPDIR": str(scratch)}  # where the child stages, so we can watch it
    home = target.parent / ".plugins.generations"
    argv = [sys.executable, "-m", "portal_boot", "install", "--wheel-dir", str(folder),
            "--target", str(target), "--trusted-keys", str(signing_keys.trusted)]  # fmt: skip
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if moment == "staging":
            assert _wait_for(lambda: any(scratch.glob("portal-boot-staging-*")))
        else:
            assert _wait_for(lambda: any(home.glob(".building-*")))
            time.sleep(float(moment.partition("+")[2].rstrip("s") or 0))
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
        child.stderr.close()
    # The old generation, or (had it already finished) the complete new one: never a mix.
    version = imported(target, "alpha_plugin", clean_env)
    assert version in {"1.0.0", "2.0.0"}
    if version == "1.0.0":
        assert installer.current_generation(target) == installed
    result = install(folder, target, signing_keys, clean_env)
    assert result.returncode == 0, result.stderr
    assert imported(target, "alpha_plugin", clean_env) == "2.0.0"
    assert not list(home.glob(".building-*"))  # the crash's leftovers are gone
    assert len([p for p in home.iterdir() if not p.name.startswith(".")]) <= 2


# --- the requirement check, through the API (no CLI needed to see a message) ---------


def _api_install(tmp_path: Path, *wheels: Path) -> InstallResult:
    folder = signed_folder(tmp_path / "w", *wheels, key=None)
    settings = Settings(wheel_dir=folder, target=tmp_path / "t" / "plugins", signatures="off")
    return installer.install(settings)


REQUIREMENTS = {
    # Requires-Dist lines: None when satisfied, else words of the error
    "image has it": (["packaging>=20"], None),
    "false marker": (['nothing-like-this>=1; python_version < "3"'], None),
    "extra not asked for": (['nothing-like-this>=1; extra == "speed"'], None),
    "version too old in image": (
        ["packaging<1"],
        "requires packaging<1, but the image has packaging",
    ),
    "absent": (["nothing-like-this>=1"], "requires nothing-like-this>=1, which is not installed"),
    "extra of a target dist": (
        ["portal-delta-lib[speed]"],
        "portal-delta-lib 1.0 requires nothing-like-this",
    ),
}


@pytest.mark.parametrize("case", REQUIREMENTS, ids=list(REQUIREMENTS))
def test_requirement_check(case, tmp_path):
    requires, problem = REQUIREMENTS[case]
    plugin = build_wheel(
        tmp_path / "src", "portal-req-plugin", "1.0", {"req_plugin.py": ""}, requires=requires
    )
    lib = build_wheel(
        tmp_path / "src", "portal-delta-lib", "1.0", {"delta_lib.py": ""},
        requires=['nothing-like-this>=1; extra == "speed"'],
    )  # fmt: skip
    if problem is None:
        assert _api_install(tmp_path, plugin, lib).changed
        return
    with pytest.raises(InstallError, match=problem.replace("[", r"\[")):
        _api_install(tmp_path, plugin, lib)
    assert not (tmp_path / "t" / "plugins").exists()


def test_a_package_the_image_already_has_is_reported(tmp_path, caplog):
    shadow = build_wheel(tmp_path / "src", "portal-shadow-plugin", "1.0", {"click/__init__.py": ""})
    with caplog.at_level(logging.WARNING, logger="portal_boot.wheels"):
        _api_install(tmp_path, shadow)
    assert "portal-shadow-plugin 1.0 ships click, which the image already has" in caplog.text


def test_verify_checks_signatures_and_installs_nothing(
    tmp_path, target, plugin_wheels, signing_keys, clean_env
):
    folder = signed_folder(
        tmp_path / "w", plugin_wheels.alpha_v1, plugin_wheels.beta, key=signing_keys.good
    )
    args = (
        "--wheel-dir",
        str(folder),
        "--target",
        str(target),
        "--trusted-keys",
        str(signing_keys.trusted),
    )
    result = portal_boot("verify", *args, env=clean_env)
    assert result.returncode == 0, result.stderr
    assert (
        f"verified {plugin_wheels.beta.name}: signed by {signing_keys.good.fingerprint}"
        in result.stderr
    )
    assert list(target.parent.iterdir()) == []
    with (folder / plugin_wheels.beta.name).open("ab") as file:
        file.write(b"\0")
    assert_one_line_failure(portal_boot("verify", *args, env=clean_env), 3, "bad signature")


# --- the example plugins and their build script ---------------------------------------

REPO = Path(__file__).resolve().parent.parent


def test_example_plugins_build_sign_install_and_migrate(tmp_path, target, clean_env):
    out = tmp_path / "out"
    env = {**clean_env, "PYTHON": sys.executable}
    script = REPO / "scripts" / "build-example-plugins.sh"
    built = subprocess.run(
        ["bash", str(script), str(out / "wheels"), str(out / "keys")],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    key = out / "keys" / "demo-signing-key.asc"
    assert "PUBLIC KEY" in key.read_text() and "PRIVATE" not in key.read_text()
    assert str(key) in built.stdout
    names = sorted(p.name for p in (out / "wheels").iterdir())
    assert names == [
        "portal_databricks_plugin-1.0.0-py3-none-any.whl",
        "portal_databricks_plugin-1.0.0-py3-none-any.whl.asc",
        "portal_s3_plugin-1.0.0-py3-none-any.whl",
        "portal_s3_plugin-1.0.0-py3-none-any.whl.asc",
        "portal_snowflake_plugin-1.0.0-py3-none-any.whl",
        "portal_snowflake_plugin-1.0.0-py3-none-any.whl.asc",
    ]
    args = ("--wheel-dir", str(out / "wheels"), "--target", str(target), "--trusted-keys", str(key))
    result = portal_boot("install", *args, env=clean_env)
    assert result.returncode == 0, result.stderr
    plugins = {p.name: p for p in discover([target], GROUP)}
    assert {name: p.distribution for name, p in plugins.items()} == {
        "DatabricksTechnicalAssetConfiguration": "portal-databricks-plugin",
        "S3TechnicalAssetConfiguration": "portal-s3-plugin",
        "SnowflakeTechnicalAssetConfiguration": "portal-snowflake-plugin",
    }
    # The chained plugins' migrations chain onto the example core, upgrade to all heads,
    # and downgrade; the Databricks plugin's own Alembic environment (migrations/ with
    # alembic.ini and env.py) works with plain Alembic too.
    databricks = plugins.pop("DatabricksTechnicalAssetConfiguration")
    assert databricks.migrations_dir is not None
    assert (databricks.migrations_dir / "env.py").is_file()
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, inspect

    core = REPO / "examples" / "portal" / "app" / "database" / "alembic"
    config = Config()
    config.set_main_option("script_location", str(core))
    config.set_main_option("path_separator", "os")
    locations = [core / "versions", *(p.migrations_dir for p in plugins.values())]
    config.set_main_option("version_locations", os.pathsep.join(map(str, locations)))
    config.set_main_option("sqlalchemy.url", f"sqlite:///{tmp_path / 'portal.db'}")
    assert set(ScriptDirectory.from_config(config).get_heads()) == {
        "core_0002",
        "s3_0002",
        "snowflake_0001",
    }
    engine = create_engine(f"sqlite:///{tmp_path / 'portal.db'}")
    command.upgrade(config, "heads")
    columns = {c["name"] for c in inspect(engine).get_columns("s3_plugin_buckets")}
    assert "versioning_enabled" in columns
    assert "snowflake_plugin_warehouses" in inspect(engine).get_table_names()
    own = Config(str(databricks.migrations_dir / "alembic.ini"))
    own.cmd_opts = argparse.Namespace(x=[f"url=sqlite:///{tmp_path / 'portal.db'}"])
    command.upgrade(own, "heads")
    assert "databricks_plugin_workspaces" in inspect(engine).get_table_names()
    with engine.connect() as conn:
        recorded = conn.exec_driver_sql("SELECT version_num FROM alembic_version_databricks_plugin")
        assert recorded.scalars().all() == ["databricks_0001"]
    command.downgrade(config, "s3_plugin@base")
    command.downgrade(config, "snowflake_plugin@base")
    command.downgrade(own, "base")
    tables = set(inspect(engine).get_table_names())
    assert not {"s3_plugin_buckets", "snowflake_plugin_warehouses"} & tables
    assert "databricks_plugin_workspaces" not in tables
    assert "data_products" in tables
    engine.dispose()
