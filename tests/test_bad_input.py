"""Bad input: each case ends in one line on stderr with the right exit status, and
changes nothing on disk or in the database.

Generated inputs (hypothesis) go through the pure functions: URL conversion, the
settings, the wheel-entry check. The CLI cases run ``portal-boot`` as a process
against a complete, valid set-up (signed wheels, a target with a generation in
use, a real PostgreSQL database) with one thing wrong, so a check that did not fire
would go on and change something, and the snapshot taken before would differ.

Cases covered by other modules are not repeated here; docs/guarantees.md lists
which test covers each kind of bad input.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import wheels
from cli_helpers import assert_one_line_failure, portal_boot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pgserver import free_port
from test_migrations_support import (
    copy_example,
    install_plugin,
    migrate_args,
    revision,
    tables,
    tree_digest,
)
from wheels import signed_folder

from portal_boot.dburl import to_sync_url
from portal_boot.errors import UsageError
from portal_boot.settings import OPTIONS, resolve
from portal_boot.wheels.staging import _unsafe_entry

plugin_wheels = wheels.plugin_wheels
signing_keys = wheels.signing_keys

# Options whose empty value means "none" rather than a mistake.
LISTS = {"requirements", "trusted_fingerprints", "enabled_plugins"}


# --- generated input, pure functions ---------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_any_text_as_a_database_url_converts_or_is_a_usage_error(raw: str) -> None:
    try:
        out = to_sync_url(raw)
    except UsageError:
        return
    assert isinstance(out, str)


@settings(max_examples=300, deadline=None)
@given(
    scheme=st.sampled_from(["postgresql", "postgresql+asyncpg", "sqlite", "mysql+aiomysql", "x+y"]),
    rest=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40),
)
def test_any_url_shaped_text_converts_or_is_a_usage_error(scheme: str, rest: str) -> None:
    try:
        to_sync_url(f"{scheme}://{rest}")
    except UsageError:
        pass


def _where(option_name: str) -> list[str]:
    option = next(o for o in OPTIONS if o.name == option_name)
    return [option.flag, *option.envvars, *(f"{v}_FILE" for v in option.envvars)]


# Environment values: any text without NUL (the kernel refuses those in the environment).
_chars = st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\0")
# Any text, and text shaped like what a person types: "~user/...", numbers, lists.
env_text = st.one_of(
    st.text(_chars, max_size=40),
    st.builds(lambda s: "~" + s, st.text("abcxyz-_/.", max_size=12)),
    st.builds(str, st.floats(allow_nan=True, allow_infinity=True)),
    st.builds(lambda xs: ",".join(xs), st.lists(st.text(_chars, max_size=8), max_size=4)),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(option=st.sampled_from(OPTIONS), which=st.integers(0, 2), raw=env_text)
def test_any_value_of_any_variable_parses_or_names_the_variable(
    option, which: int, raw: str
) -> None:
    var = option.envvars[min(which, len(option.envvars) - 1)]
    try:
        resolve({}, {var: raw})
    except UsageError as exc:
        assert var in str(exc), (var, str(exc))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(option=st.sampled_from(OPTIONS), raw=env_text)
def test_any_value_of_any_flag_parses_or_names_the_flag(option, raw: str) -> None:
    value: object = (raw,) if option.name in {"requirements", "trusted_fingerprints"} else raw
    if option.name == "auto_migrate":
        return  # a boolean switch on the command line: click gives True/False, never text
    try:
        resolve({option.name: value}, {})
    except UsageError as exc:
        assert option.flag in str(exc), (option.flag, str(exc))


@pytest.mark.parametrize("option", OPTIONS, ids=[o.name for o in OPTIONS])
def test_every_variable_empty_or_blank(option, tmp_path: Path) -> None:
    for var in option.envvars:
        empty_file = tmp_path / f"{var}.txt"
        empty_file.write_text("\n")
        for env in ({var: ""}, {var: "  "}, {f"{var}_FILE": str(empty_file)}):
            if option.name in LISTS:
                assert getattr(resolve({}, env), option.name) == ()
                continue
            with pytest.raises(UsageError) as info:
                resolve({}, env)
            assert next(iter(env)) in str(info.value)


@pytest.mark.parametrize(
    "raw", ["~no-such-user-here/plugins", "~no_such_user"], ids=["with-path", "bare"]
)
@pytest.mark.parametrize("option", ["target", "wheel_dir", "trusted_keys", "alembic_config"])
def test_a_path_with_an_unknown_users_home_is_a_usage_error(option: str, raw: str) -> None:
    """``~user`` with no such user: Path.expanduser() raises RuntimeError, which must
    not surface as an internal error (status 1)."""
    var = next(o for o in OPTIONS if o.name == option).envvars[0]
    with pytest.raises(UsageError, match=var):
        resolve({}, {var: raw})


entry_part = st.sampled_from(["..", ".", "", "a", "b.py", "..a", "a..", "\\..", "C:", "/"])


@settings(max_examples=1000, deadline=None)
@given(parts=st.lists(entry_part, min_size=1, max_size=6), lead=st.sampled_from(["", "/", "\\"]))
def test_a_wheel_entry_judged_safe_stays_inside_the_target(parts: list[str], lead: str) -> None:
    name = lead + "/".join(parts)
    if _unsafe_entry(name):
        return
    target = "/target/generation"
    for candidate in (name, name.replace("\\", "/")):  # the installer may read either way
        resolved = posixpath.normpath(posixpath.join(target, candidate))
        assert resolved == target or resolved.startswith(target + "/"), (name, resolved)


# --- the CLI, against a complete set-up with one thing wrong -----------------------


@pytest.fixture
def world(tmp_path, plugin_wheels, signing_keys, clean_env, pg_url) -> dict:
    """A valid set-up: signed wheels, a target whose generation is in use, the example
    application, and an empty database. Every CLI case changes one thing."""
    folder = signed_folder(tmp_path / "wheels", plugin_wheels.alpha_v1, key=signing_keys.good)
    target = tmp_path / "state" / "plugins"
    target.parent.mkdir()
    first = portal_boot(
        "install", "--wheel-dir", str(folder), "--target", str(target),
        "--trusted-keys", str(signing_keys.trusted), env=clean_env,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    signed_folder(folder, plugin_wheels.beta, key=signing_keys.good)  # a pending change
    app = copy_example(tmp_path / "portal")
    env = {
        **clean_env,
        "PORTAL_BOOT_WHEEL_DIR": str(folder),
        "PORTAL_BOOT_TARGET": str(target),
        "PORTAL_BOOT_TRUSTED_KEYS": str(signing_keys.trusted),
        "PORTAL_BOOT_ALEMBIC_CONFIG": str(app),
        "PORTAL_BOOT_DATABASE_URL": pg_url,
        "PORTAL_BOOT_HOST": "127.0.0.1",
        "PORTAL_BOOT_PORT": "1",  # never reached: every case must stop before serving
        "PORTAL_BOOT_DB_TIMEOUT": "5",
    }
    return {"env": env, "folder": folder, "target": target, "app": app, "url": pg_url,
            "root": tmp_path}  # fmt: skip


def snapshot(world: dict) -> tuple:
    return (
        tree_digest(world["root"] / "state"),
        tree_digest(world["folder"]),
        tree_digest(world["app"].parent),
        tables(world["url"]),
    )


def _run(world: dict, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return portal_boot(*args, env=env if env is not None else world["env"], cwd=cwd, timeout=60)


def _all_refused(world: dict, cases: list[tuple[str, dict[str, str], tuple[str, ...]]]) -> None:
    """Run ``portal-boot run`` once per case (id, environment, words of the error),
    a few at a time: each must stop with status 2 in one line, before any work."""
    from concurrent.futures import ThreadPoolExecutor

    before = snapshot(world)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda case: _run(world, "run", env=case[1]), cases))
    wrong = []
    for (case, _, words), result in zip(cases, results):
        try:
            assert_one_line_failure(result, 2, *words)
        except AssertionError as exc:
            wrong.append((case, str(exc)[:500]))
    assert not wrong, wrong
    assert snapshot(world) == before


def test_run_with_any_variable_empty_stops_before_any_work(world) -> None:
    cases = []
    for option in OPTIONS:
        if option.name in LISTS:
            continue
        for var in option.envvars:
            env = {k: v for k, v in world["env"].items() if k not in option.envvars}
            cases.append((var, {**env, var: ""}, (var,)))
    _all_refused(world, cases)


GARBAGE = {
    # variable: (value, words of the error line)
    "PORTAL_BOOT_DB_TIMEOUT": ("1e999", "positive number"),
    "PORTAL_BOOT_LOCK_TIMEOUT": ("nan", "positive number"),
    "PORTAL_BOOT_DDL_LOCK_TIMEOUT": ("-1", "0 or more"),
    "PORTAL_BOOT_PORT": ("80 80", "not a port"),
    "PORTAL_BOOT_SIGNATURES": ("required", "require, off"),
    "PORTAL_BOOT_MIGRATIONS_MODE": ("symlink", "locations, link, copy"),
    "PORTAL_BOOT_LOG_FORMAT": ("yaml", "text, json"),
    "PORTAL_BOOT_LOG_LEVEL": ("verbose", "debug"),
    "AUTO_RUN_PLUGIN_MIGRATIONS": ("sometimes", "not a boolean"),
    "PORTAL_BOOT_TRUSTED_FINGERPRINTS": ("0xDEADBEEF", "40-hex-digit"),
    "PORTAL_BOOT_REQUIREMENTS": ("portal-x==1.0", "exclusive"),  # with a wheel folder
    "DATABASE_URL_FILE": ("/no/such/secret", "cannot read the file"),
}


def test_run_with_a_garbage_variable_stops_before_any_work(world) -> None:
    env = world["env"]
    if "DATABASE_URL_FILE" in GARBAGE:
        env = {k: v for k, v in env.items() if k != "PORTAL_BOOT_DATABASE_URL"}
    cases = [(var, {**env, var: value}, (var, words)) for var, (value, words) in GARBAGE.items()]
    _all_refused(world, cases)


def test_run_with_a_path_under_an_unknown_users_home(world) -> None:
    """Path.expanduser() raises RuntimeError for ``~user`` with no such user: a usage
    error (2) naming the variable, not an internal error (1)."""
    cases = [
        (var, {**world["env"], var: "~no-such-user/x"}, (var,))
        for var in ("PORTAL_BOOT_TARGET", "PORTAL_BOOT_WHEEL_DIR", "PORTAL_BOOT_TRUSTED_KEYS",
                    "PORTAL_BOOT_ALEMBIC_CONFIG")
    ]  # fmt: skip
    _all_refused(world, cases)


URLS = {
    "not a URL": ("not a url at all", "malformed"),
    "port not a number": ("postgresql+asyncpg://app:pw@db:port/portal", "malformed"),
    "unknown driver": ("foo+bar://db/portal", "unknown database driver"),
    "unknown postgres driver": ("postgresql+nosuch://app:pw@db/portal", "unknown database driver"),
    "driver not installed": ("mysql+pymysql://app:pw@db/portal", "not installed"),
    "bad asyncpg ssl": ("postgresql+asyncpg://app:pw@db/portal?ssl=sometimes", "sslmode"),
}


def test_run_with_a_bad_database_url_stops_before_any_work(world) -> None:
    """Found wrong before the install, not after it: a URL that no wait can fix must
    not cost (or change) anything first."""
    cases = [
        (case, {**world["env"], "PORTAL_BOOT_DATABASE_URL": url}, (words,))
        for case, (url, words) in URLS.items()
    ]
    _all_refused(world, cases)


def test_a_wheel_folder_that_is_a_file(world) -> None:
    before = snapshot(world)
    not_a_folder = world["root"] / "wheels.tar"
    not_a_folder.write_bytes(b"not a folder")
    result = _run(world, "install", "--wheel-dir", str(not_a_folder))
    assert_one_line_failure(result, 2, str(not_a_folder), "--wheel-dir / PORTAL_BOOT_WHEEL_DIR")
    assert snapshot(world) == before


# As root, file permissions stop nobody: drop the two capabilities that bypass them.
_NO_DAC = "-dac_override,-dac_read_search"


@pytest.fixture
def unprivileged() -> list[str]:
    """The argv prefix that runs portal-boot without the power to ignore file modes."""
    prefix = [sys.executable, "-m", "portal_boot"]
    if os.geteuid() != 0:
        return prefix
    if shutil.which("setpriv") is None:
        pytest.skip("runs as root without setpriv: file modes cannot be tested")
    return ["setpriv", f"--inh-caps={_NO_DAC}", f"--bounding-set={_NO_DAC}", "--", *prefix]


@pytest.mark.parametrize("what", ["folder", "wheel"])
def test_an_unreadable_wheel_folder_or_wheel(
    what, unprivileged, tmp_path, plugin_wheels, signing_keys, clean_env
):
    folder = signed_folder(tmp_path / "wheels", plugin_wheels.alpha_v1, key=signing_keys.good)
    state = tmp_path / "state"
    state.mkdir()
    locked = folder if what == "folder" else folder / plugin_wheels.alpha_v1.name
    os.chmod(locked, 0o000)
    args = ["install", "--wheel-dir", str(folder), "--trusted-keys", str(signing_keys.trusted),
            "--target", str(state / "plugins")]  # fmt: skip
    try:
        result = subprocess.run(
            [*unprivileged, *args], env=clean_env, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
    finally:
        os.chmod(locked, 0o755)
    if what == "folder":
        assert_one_line_failure(result, 2, "cannot read the wheel folder", "Permission denied")
    else:
        assert_one_line_failure(result, 3, plugin_wheels.alpha_v1.name, "cannot read it")
    assert list(state.iterdir()) == []


INSTALL_REFUSALS = {
    # case: (status, words of the error line)
    "signature of another wheel": (3, "does not match"),
    "key file that is not a key": (3, "holds no OpenPGP public key"),
    "secret key as trusted key": (3, "holds a secret key"),
}


@pytest.mark.parametrize("case", INSTALL_REFUSALS, ids=list(INSTALL_REFUSALS))
def test_install_refusals_through_the_cli(world, case, plugin_wheels, signing_keys) -> None:
    folder, env = world["folder"], dict(world["env"])
    alpha = folder / plugin_wheels.alpha_v1.name
    beta = folder / plugin_wheels.beta.name
    if case == "signature of another wheel":
        shutil.copyfile(alpha.with_name(alpha.name + ".asc"), beta.with_name(beta.name + ".asc"))
    elif case == "key file that is not a key":
        garbage = world["root"] / "keys.asc"
        garbage.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot a key\n")
        env["PORTAL_BOOT_TRUSTED_KEYS"] = str(garbage)
    else:
        secret = world["root"] / "secret.asc"
        secret.write_bytes(
            signing_keys.good.lab.gpg("--armor", "--export-secret-keys",
                                      signing_keys.good.fingerprint).stdout
        )  # fmt: skip
        env["PORTAL_BOOT_TRUSTED_KEYS"] = str(secret)
    before = snapshot(world)
    status, words = INSTALL_REFUSALS[case]
    for command in ("verify", "install", "run"):
        result = _run(world, command, env=env)
        line = assert_one_line_failure(result, status, words)
        assert "PRIVATE KEY" not in result.stderr and "BEGIN PGP" not in line
    assert snapshot(world) == before


# --- migrations: bad revision files ---------------------------------------------


@pytest.fixture
def plugin_target(tmp_path: Path) -> Path:
    return tmp_path / "plugins"


def _migrate(world_app: Path, url: str, target: Path, env: dict[str, str]):
    return portal_boot(*migrate_args(world_app, url, target=target), env=env, timeout=60)


def test_a_revision_file_with_a_syntax_error(tmp_path, plugin_target, pg_url, clean_env) -> None:
    app = copy_example(tmp_path / "portal")
    broken = revision("broken_0001", None, labels=["broken"], depends_on="core_0002")
    broken = broken.replace("def upgrade() -> None:", "def upgrade( -> None:")
    plugin = install_plugin(plugin_target, "broken_plugin", {"broken_0001.py": broken})
    before = tree_digest(tmp_path)
    result = _migrate(app, pg_url, plugin_target, clean_env)
    assert_one_line_failure(
        result, 6, str(plugin.migration_dir / "broken_0001.py"), "plugin broken_plugin",
        "not valid Python", "line",
    )  # fmt: skip
    assert tables(pg_url) == set()
    assert tree_digest(tmp_path) == before


OUTSIDE_REVISION = 'op.execute("CREATE TABLE outside_code_ran (id integer)")'


@pytest.mark.parametrize("how", ["file", "folder"])
def test_a_link_in_a_plugins_migration_folder_pointing_outside_it(
    how: str, tmp_path: Path, plugin_target: Path, pg_url: str, clean_env
) -> None:
    """A plugin's revisions are its own files: a link that leads out of the plugin
    (to a file anyone could write, here a revision that creates a table) is refused
    by name, before anything runs."""
    app = copy_example(tmp_path / "portal")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "linked_0002.py").write_text(
        revision("linked_0002", "linked_0001", upgrade=OUTSIDE_REVISION)
    )
    own = revision("linked_0001", None, labels=["linked"], depends_on="core_0002")
    if how == "file":
        plugin = install_plugin(plugin_target, "linked_plugin", {"linked_0001.py": own})
        link = plugin.migration_dir / "linked_0002.py"
        link.symlink_to(outside / "linked_0002.py")
    else:
        plugin = install_plugin(plugin_target, "linked_plugin", {})
        (outside / "linked_0001.py").write_text(own)
        link = plugin.package_dir / "migration"
        link.rmdir() if link.is_dir() else None
        link.symlink_to(outside, target_is_directory=True)
    before = tree_digest(tmp_path)
    result = _migrate(app, pg_url, plugin_target, clean_env)
    assert_one_line_failure(result, 6, str(link), "plugin linked_plugin", "outside")
    assert tables(pg_url) == set()
    assert tree_digest(tmp_path) == before


# --- serve: what only uvicorn would notice ----------------------------------------


def test_an_app_that_is_not_module_colon_attribute(world) -> None:
    """A malformed --app is a usage error (2) found before any work. Handed to
    uvicorn after the install and the migrations, it would end with uvicorn's
    startup-failure status 3, which to an operator reads "signature verification
    failed"."""
    cases = [
        (value, {**world["env"], "PORTAL_BOOT_APP": value}, ("PORTAL_BOOT_APP", "module:attribute"))
        for value in ("not an app", "app.main", "app.main:", ":app", "app-main:app")
    ]
    _all_refused(world, cases)


@pytest.mark.parametrize(
    ("option", "value"),
    [("--app", "no_such_module:app"), ("--app", "app.main:no_such_attribute"),
     ("--host", "no such host!")],
)  # fmt: skip
def test_what_only_uvicorn_finds_does_not_exit_with_a_portal_boot_status(
    world, option: str, value: str
) -> None:
    """Past the exec, uvicorn reports an app it cannot import or an address it cannot
    bind with its own status 3, which portal-boot documents as "signature
    verification failed". The launcher maps it to 2 with the usual closing line."""
    env = {**world["env"], "PORTAL_BOOT_PORT": str(free_port())}
    result = _run(world, "serve", option, value, env=env, cwd=world["app"].parent)
    assert result.returncode == 2, (result.returncode, result.stderr)
    last = result.stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("portal-boot: ") and option in last, result.stderr


def test_run_with_a_bad_migration_database_url_names_it_before_any_work(world) -> None:
    env = {**world["env"], "PORTAL_BOOT_MIGRATION_DATABASE_URL": "postgresql+nosuchdriver://u@db/p"}
    _all_refused(
        world,
        [("migration URL", env, ("PORTAL_BOOT_MIGRATION_DATABASE_URL", "unknown database driver"))],
    )
