"""``portal-boot install --requirement`` against a real PEP 503 index served on
127.0.0.1 by the test: pip resolves, portal-boot downloads each wheel and its
``<url>.asc``, verifies them, installs them."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import wheels
from cli_helpers import assert_one_line_failure, portal_boot
from test_install import imported, tree
from wheels import SigningKeys, signed_folder

from portal_boot import wheels as installer

# Session fixtures shared by the install tests (built once: wheels, gpg keys).
plugin_wheels = wheels.plugin_wheels
signing_keys = wheels.signing_keys


class Index:
    """A PEP 503 simple index over a folder, on 127.0.0.1, recording the paths asked for."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        requests = self.requests

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                requests.append(self.path)

        handler = functools.partial(Handler, directory=str(root))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, *files: Path) -> None:
        """Put ``files`` (and any ``.asc`` beside them) on the index and rewrite its pages."""
        packages = self.root / "packages"
        packages.mkdir(parents=True, exist_ok=True)
        for file in files:
            shutil.copyfile(file, packages / file.name)
            if file.with_name(file.name + ".asc").exists():
                shutil.copyfile(file.with_name(file.name + ".asc"), packages / f"{file.name}.asc")
        projects: dict[str, list[Path]] = {}
        for file in sorted(packages.iterdir()):
            if file.name.endswith(".asc"):
                continue
            name = re.split(r"-\d", file.name, maxsplit=1)[0]
            projects.setdefault(re.sub(r"[-_.]+", "-", name).lower(), []).append(file)
        simple = self.root / "simple"
        simple.mkdir(exist_ok=True)
        links = "".join(f'<a href="{p}/">{p}</a>\n' for p in sorted(projects))
        (simple / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>")
        for project, project_files in projects.items():
            rows = ""
            for file in project_files:
                sha = hashlib.sha256(file.read_bytes()).hexdigest()
                gpg = ' data-gpg-sig="true"' if Path(f"{file}.asc").exists() else ""
                rows += f'<a href="../../packages/{file.name}#sha256={sha}"{gpg}>{file.name}</a>\n'
            (simple / project).mkdir(exist_ok=True)
            (simple / project / "index.html").write_text(
                f"<!DOCTYPE html><html><body>\n{rows}</body></html>"
            )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    served = Index(tmp_path / "index")
    try:
        yield served
    finally:
        served.close()


def index_env(clean_env: dict[str, str], index: Index) -> dict[str, str]:
    """The user's pip settings for this index, and none of the host's."""
    env = {k: v for k, v in clean_env.items() if k not in {"PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL"}}
    return {**env, "PIP_INDEX_URL": index.url, "PIP_CONFIG_FILE": os.devnull}


def install(requirement: str, target: Path, keys: SigningKeys, env: dict[str, str]):
    return portal_boot(
        "install", "--requirement", requirement, "--target", str(target),
        "--trusted-keys", str(keys.trusted), env=env, timeout=180,
    )  # fmt: skip


def test_install_from_an_index_with_signatures_beside_the_wheels(
    tmp_path, index, plugin_wheels, signing_keys, clean_env
):
    signed = signed_folder(
        tmp_path / "signed", plugin_wheels.gamma, plugin_wheels.gamma_lib, plugin_wheels.alpha_v1,
        key=signing_keys.good,
    )  # fmt: skip
    index.publish(*sorted(signed.glob("*.whl")))
    target = tmp_path / "volume" / "plugins"
    env = index_env(clean_env, index)
    result = install("portal-gamma-plugin==1.0.0", target, signing_keys, env)
    assert result.returncode == 0, result.stderr
    # The plugin and the dependency the image lacks; not `packaging`, which the image has.
    assert sorted(p.name for p in target.glob("*.dist-info")) == [
        "portal_gamma_lib-1.0.0.dist-info",
        "portal_gamma_plugin-1.0.0.dist-info",
    ]
    assert imported(target, "gamma_plugin", env) == "1.0.0"
    assert {
        f"/packages/{w}.asc" for w in (plugin_wheels.gamma.name, plugin_wheels.gamma_lib.name)
    } <= set(index.requests)
    assert f"signed by {signing_keys.good.fingerprint}" in result.stderr
    generation = installer.current_generation(target)

    # Same exact pins, same pip settings: a no-op that needs neither pip nor the index.
    index.close()
    again = install("portal-gamma-plugin==1.0.0", target, signing_keys, env)
    assert again.returncode == 0, again.stderr
    assert "no-op, same pinned requirements" in again.stderr
    assert installer.current_generation(target) == generation


@pytest.mark.parametrize("signature", ["missing", "unknown key"])
def test_a_wheel_without_a_trusted_signature_on_the_index_installs_nothing(
    signature, tmp_path, index, plugin_wheels, signing_keys, clean_env
):
    signed_folder(tmp_path / "signed", plugin_wheels.gamma, key=signing_keys.good)
    key = None if signature == "missing" else signing_keys.other
    signed_folder(tmp_path / "signed", plugin_wheels.gamma_lib, key=key)
    index.publish(*sorted((tmp_path / "signed").glob("*.whl")))
    target = tmp_path / "volume" / "plugins"
    target.parent.mkdir()
    result = install(
        "portal-gamma-plugin==1.0.0", target, signing_keys, index_env(clean_env, index)
    )
    words = "no signature on the index" if signature == "missing" else "unknown key"
    assert_one_line_failure(result, 3, words, plugin_wheels.gamma_lib.name)
    assert tree(target.parent) == {}


def test_a_project_with_only_a_source_distribution_is_refused(
    tmp_path, index, plugin_wheels, signing_keys, clean_env
):
    index.publish(plugin_wheels.sdist)
    target = tmp_path / "volume" / "plugins"
    result = install(
        "portal-gamma-plugin==1.0.0", target, signing_keys, index_env(clean_env, index)
    )
    assert_one_line_failure(result, 4, "with pip", "No matching distribution", "PIP_INDEX_URL")
    assert not target.exists()
    assert "/packages/portal-gamma-plugin-1.0.0.tar.gz" not in index.requests  # never fetched


def test_the_pinned_no_op_honours_the_signing_key_expiry(
    tmp_path, index, plugin_wheels, gpg_keys, clean_env
):
    from test_install_warm import IN_2020, GpgSpy, refused

    # Signed, published and installed while the key was valid (2020, on gpg's clock).
    signed = signed_folder(
        tmp_path / "signed", plugin_wheels.gamma, plugin_wheels.gamma_lib, key=gpg_keys.expired
    )
    index.publish(*sorted(signed.glob("*.whl")))
    keys = gpg_keys.expired.export(tmp_path / "keys" / "expired.asc")
    spy = GpgSpy.make(tmp_path / "spy")
    target = tmp_path / "volume" / "plugins"
    argv = ("install", "--requirement", "portal-gamma-plugin==1.0.0", "--target", str(target),
            "--trusted-keys", str(keys), "--log-level", "debug")  # fmt: skip
    env = index_env(clean_env, index)
    first = portal_boot(*argv, env=spy.env(env, faked=IN_2020), timeout=180)
    assert first.returncode == 0, first.stderr
    generation = installer.current_generation(target)
    state = (generation / ".portal-boot.json").read_text()
    assert '"expires": 1577923200' in state and '"request": "' in state
    # Today the same pins would be a no-op that contacts nothing, but the key has expired.
    again = portal_boot(*argv, env=spy.env(env), timeout=180)
    assert "expires or expired at 2020-01-02" in again.stderr
    refused(again, 3, "expired key")
    assert installer.current_generation(target) == generation
