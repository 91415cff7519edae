"""Permission problems are the user's to fix: one line naming the path, the user and the
fix, with status 2 or 4; never "internal error" and status 1.

The situation the image rehearsal (tests/images/) found: a state folder of another uid
(OpenShift's arbitrary uid in group 0 on a volume that belongs to uid 10001). The tests run
as root, whom file modes do not stop: portal-boot runs under ``setpriv`` without the
capabilities that bypass them (a child of another uid could not use this interpreter,
which may live under /root), and the folders belong to ``nobody``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_failure
from wheels import plugin_wheels, signed_folder, signing_keys  # noqa: F401

# As root, file permissions stop nobody: drop every capability (DAC_OVERRIDE,
# DAC_READ_SEARCH, FOWNER and the rest) for the child.
_NO_CAPS = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]
NOBODY = 65534


@pytest.fixture
def unprivileged() -> list[str]:
    prefix = [sys.executable, "-m", "portal_boot"]
    if os.geteuid() != 0:
        return prefix
    if shutil.which("setpriv") is None:
        pytest.skip("runs as root without setpriv: file modes cannot be tested")
    return [*_NO_CAPS, *prefix]


@pytest.fixture
def foreign_state(tmp_path: Path) -> Iterator[Path]:
    """A state folder of another user, 0750: like uid 10001's volume seen by an arbitrary
    uid. Not root: the folder is our own with no rights at all, which refuses us the same."""
    state = tmp_path / "state"
    state.mkdir()
    if os.geteuid() == 0:
        os.chown(state, NOBODY, NOBODY)
        os.chmod(state, 0o750)
    else:
        os.chmod(state, 0o000)
    try:
        yield state
    finally:
        os.chmod(state, 0o755)


def _run(prefix: list[str], env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _user() -> str:
    return f"uid {os.geteuid()}"


def test_install_into_a_state_folder_of_another_user(
    unprivileged, foreign_state, tmp_path, plugin_wheels, signing_keys, clean_env  # noqa: F811
) -> None:
    folder = signed_folder(tmp_path / "wheels", plugin_wheels.alpha_v1, key=signing_keys.good)
    target = foreign_state / "plugins"
    result = _run(
        unprivileged, clean_env, "install", "--wheel-dir", str(folder),
        "--trusted-keys", str(signing_keys.trusted), "--target", str(target),
    )  # fmt: skip
    line = assert_one_line_failure(
        result, 4, "InstallError", str(target), "Permission denied", _user(), "chmod g=u"
    )
    assert "internal error" not in result.stderr, line


def test_status_on_a_state_folder_of_another_user(unprivileged, foreign_state, clean_env) -> None:
    target = foreign_state / "plugins"
    result = _run(unprivileged, clean_env, "status", "--target", str(target))
    assert_one_line_failure(
        result, 2, "UsageError", str(target), "Permission denied", _user(), str(foreign_state)
    )
    assert "internal error" not in result.stderr


def test_install_into_a_read_only_state_folder(
    unprivileged, tmp_path, plugin_wheels, signing_keys, clean_env  # noqa: F811
) -> None:
    """Readable but not writable (another user's 0755 folder, an image's folder): the
    install cannot write its lock and generations beside the target."""
    folder = signed_folder(tmp_path / "wheels", plugin_wheels.alpha_v1, key=signing_keys.good)
    state = tmp_path / "state"
    state.mkdir()
    if os.geteuid() == 0:
        os.chown(state, NOBODY, NOBODY)
    os.chmod(state, 0o555)
    try:
        result = _run(
            unprivileged, clean_env, "install", "--wheel-dir", str(folder),
            "--trusted-keys", str(signing_keys.trusted), "--target", str(state / "plugins"),
        )  # fmt: skip
    finally:
        os.chmod(state, 0o755)
    assert_one_line_failure(
        result, 4, "cannot write beside the target", str(state), _user(), "emptyDir"
    )
    assert list(state.iterdir()) == []


def test_an_unreadable_key_file_names_the_user(
    unprivileged, tmp_path, plugin_wheels, signing_keys, clean_env  # noqa: F811
) -> None:
    folder = signed_folder(tmp_path / "wheels", plugin_wheels.alpha_v1, key=signing_keys.good)
    keys = tmp_path / "keys.asc"
    shutil.copy(signing_keys.trusted, keys)
    if os.geteuid() == 0:
        os.chown(keys, NOBODY, NOBODY)
    os.chmod(keys, 0o600)
    state = tmp_path / "state"
    state.mkdir()
    result = _run(
        unprivileged, clean_env, "install", "--wheel-dir", str(folder),
        "--trusted-keys", str(keys), "--target", str(state / "plugins"),
    )  # fmt: skip
    # A key that cannot be read fails closed, like every other verification failure (3).
    assert_one_line_failure(result, 3, str(keys), "Permission denied", _user(), "chmod a+r")
    assert list(state.iterdir()) == []


def test_serve_refuses_a_target_it_cannot_read(unprivileged, foreign_state, clean_env) -> None:
    """uvicorn would otherwise start without the plugins and say nothing."""
    target = foreign_state / "plugins"
    result = _run(unprivileged, clean_env, "serve", "--target", str(target), "--port", "1")
    assert_one_line_failure(result, 2, "UsageError", str(target), "Permission denied", _user())
