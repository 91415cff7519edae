"""The unpacker (portal_boot/wheels/unpack.py): one pass over each file with its RECORD entry
checked, bytecode written as the sources land, on every core, in forked workers.

Real wheels (zip files written here, signed with real gpg keys for the CLI cases), the
real CLI, real processes killed with real signals. The reference for "the same tree"
is PyPA installer's own ``validate_record`` + ``install`` followed by
``compileall.compile_dir``: what portal-boot did before the unpacker existed.
"""

from __future__ import annotations

import compileall
import hashlib
import os
import signal
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import wheels
from boot_support import until
from cli_helpers import assert_one_line_failure, portal_boot
from test_install import install, tree
from wheels import build_plugin, build_wheel, signed_folder

from portal_boot import wheels as installer
from portal_boot.errors import InstallError
from portal_boot.wheels import unpack

plugin_wheels = wheels.plugin_wheels
signing_keys = wheels.signing_keys


def _rewrite(wheel: Path, member: str, data: bytes) -> Path:
    """The same wheel with ``member``'s bytes replaced and RECORD left as it was."""
    with zipfile.ZipFile(wheel) as src:
        entries = {info.filename: src.read(info) for info in src.infolist()}
    entries[member] = data
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as dst:
        for name, content in entries.items():
            dst.writestr(name, content)
    return wheel


def _script_wheel(out: Path) -> Path:
    """Every scheme installer knows: a ``#!python`` script, a header, data, an entry
    point launcher, an executable module."""
    return build_wheel(
        out,
        "portal-schemes-plugin",
        "1.0.0",
        {
            "schemes_plugin/__init__.py": "X = 1\n",
            "schemes_plugin/tool.py": "#!/usr/bin/env python\nprint('tool')\n",
            "portal_schemes_plugin-1.0.0.data/scripts/schemes-run": "#!python\nprint('run')\n",
            "portal_schemes_plugin-1.0.0.data/scripts/helper.py": "#!python\nprint('helper')\n",
            "portal_schemes_plugin-1.0.0.data/headers/schemes.h": "#define SCHEMES 1\n",
            "portal_schemes_plugin-1.0.0.data/data/share/schemes/notes.txt": "notes\n",
        },
        entry_points={"console_scripts": {"schemes": "schemes_plugin:main"}},
    )


def _reference(paths: list[Path], build: Path) -> None:
    """What portal-boot did before: installer, file by file, then compile_dir."""
    from installer import install as install_wheel
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile

    for path in paths:
        name = path.name.split("-")[0]
        schemes = {
            "purelib": str(build), "platlib": str(build), "scripts": str(build / "bin"),
            "headers": str(build / "include" / name), "data": str(build),
        }  # fmt: skip
        destination = SchemeDictionaryDestination(
            schemes, interpreter=sys.executable, script_kind="posix"
        )
        with WheelFile.open(path) as source:
            source.validate_record()
            install_wheel(source, destination, {"INSTALLER": b"portal-boot\n"})
    compileall.compile_dir(str(build), quiet=1, workers=1)


def _files(build: Path) -> dict[str, tuple[int, str]]:
    """Each file with its mode and content; a .pyc without its header's mtime and with
    the build folder's name (same length in both builds) masked."""
    out = {}
    for dirpath, _, names in os.walk(build):
        for name in names:
            path = Path(dirpath, name)
            data = path.read_bytes()
            if name.endswith(".pyc"):
                data = data[16:].replace(str(build).encode(), b"<build>")
            out[str(path.relative_to(build))] = (
                path.stat().st_mode,
                hashlib.sha256(data).hexdigest(),
            )
    return out


def _wheel_set(plugin_wheels, tmp_path: Path) -> list[Path]:
    return [
        plugin_wheels.alpha_v1, plugin_wheels.beta, plugin_wheels.big, plugin_wheels.gamma_lib,
        _script_wheel(tmp_path / "schemes"),
    ]  # fmt: skip


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_the_tree_is_what_installer_and_compileall_made(plugin_wheels, tmp_path, workers):
    paths = _wheel_set(plugin_wheels, tmp_path)
    ref, new = tmp_path / "ref", tmp_path / "new"
    ref.mkdir()
    new.mkdir()
    _reference(paths, ref)
    outcome = unpack.install_wheels(
        [unpack.Wheel(p, p.name.split("-")[0], p.name) for p in paths], new, workers=workers
    )
    assert outcome.workers == workers
    assert outcome.not_compiled == [] and outcome.warnings == []
    expected, got = _files(ref), _files(new)
    assert got == expected
    assert any(name.endswith(".pyc") for name in got)
    # The #!python script got this interpreter; the entry point a launcher.
    assert (new / "bin" / "schemes-run").read_text().startswith(f"#!{sys.executable}\n")
    assert os.access(new / "bin" / "schemes", os.X_OK)


def test_checked_hash_pycs_under_source_date_epoch(plugin_wheels, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    paths = [plugin_wheels.alpha_v1]
    ref, new = tmp_path / "ref", tmp_path / "new"
    ref.mkdir()
    new.mkdir()
    _reference(paths, ref)
    unpack.install_wheels([unpack.Wheel(paths[0], "portal_alpha_plugin", paths[0].name)], new)
    assert _files(new) == _files(ref)
    pyc = next(new.rglob("*.pyc")).read_bytes()
    assert int.from_bytes(pyc[4:8], "little") == 0b11  # hash-based, checked


def test_a_big_file_is_streamed_not_read_whole(tmp_path):
    """64 MiB of data in one member (a few KB zipped): the unpacker's peak Python
    allocation stays far below the file's size."""
    wheel = build_wheel(
        tmp_path / "w", "portal-blob-plugin", "1.0.0",
        {"blob_plugin/__init__.py": "", "blob_plugin/blob.bin": bytes(64 << 20)},
    )  # fmt: skip
    build = tmp_path / "build"
    build.mkdir()
    tracemalloc.start()
    try:
        unpack.install_wheels([unpack.Wheel(wheel, "portal_blob_plugin", wheel.name)], build,
                              workers=1)  # fmt: skip
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (build / "blob_plugin" / "blob.bin").stat().st_size == 64 << 20
    assert peak < 8 << 20, f"peak {peak >> 20} MiB for a 64 MiB member"


# --- through the CLI: refused, and nothing changes ---------------------------------------------


@pytest.fixture
def installed(tmp_path, plugin_wheels, signing_keys, clean_env) -> tuple[Path, dict[str, str]]:
    """A target holding alpha 1.0.0, installed by portal-boot."""
    target = tmp_path / "volume" / "plugins"
    target.parent.mkdir()
    folder = signed_folder(tmp_path / "first", plugin_wheels.alpha_v1, key=signing_keys.good)
    result = install(folder, target, signing_keys, clean_env)
    assert result.returncode == 0, result.stderr
    return target, tree(target.parent)


@pytest.mark.parametrize(
    "how",
    ["same size, other bytes", "longer than RECORD says"],
)
def test_a_signed_wheel_whose_file_does_not_match_its_record_is_refused(
    how, installed, tmp_path, plugin_wheels, signing_keys, clean_env
):
    target, before = installed
    wheel = build_plugin(tmp_path / "bad", "gamma_plugin")
    member = "gamma_plugin/__init__.py"
    with zipfile.ZipFile(wheel) as zf:
        original = zf.read(member)
    data = original.replace(b"1", b"2") if how.startswith("same") else original + b"# more\n"
    assert data != original
    _rewrite(wheel, member, data)
    # Signed after the change: the signature is good, only RECORD can tell.
    folder = signed_folder(tmp_path / "folder", wheel, plugin_wheels.alpha_v2,
                           key=signing_keys.good)  # fmt: skip
    result = install(folder, target, signing_keys, clean_env)
    assert_one_line_failure(result, 4, wheel.name, "didn't match RECORD", member)
    assert tree(target.parent) == before


def test_two_wheels_shipping_the_same_file_are_refused(
    installed, tmp_path, plugin_wheels, signing_keys, clean_env
):
    target, before = installed
    one = build_wheel(tmp_path / "one", "portal-one", "1.0.0", {"shared_mod/__init__.py": "A=1\n"})
    two = build_wheel(tmp_path / "two", "portal-two", "1.0.0", {"shared_mod/__init__.py": "B=2\n"})
    folder = signed_folder(tmp_path / "folder", one, two, plugin_wheels.alpha_v2,
                           key=signing_keys.good)  # fmt: skip
    result = install(folder, target, signing_keys, clean_env)
    assert_one_line_failure(result, 4, "clashes with another wheel", "shared_mod/__init__.py")
    assert tree(target.parent) == before


def test_a_source_that_does_not_compile_is_a_warning(tmp_path, signing_keys, clean_env):
    wheel = build_plugin(
        tmp_path / "py2",
        "oldstyle_plugin",
        extra_files={"oldstyle_plugin/legacy.py": "print 'x'\n"},
    )
    folder = signed_folder(tmp_path / "folder", wheel, key=signing_keys.good)
    target = tmp_path / "plugins"
    result = install(folder, target, signing_keys, clean_env)
    assert result.returncode == 0, result.stderr
    assert "oldstyle_plugin/legacy.py: SyntaxError" in result.stderr
    assert "did not compile" in result.stderr
    pycache = target / "oldstyle_plugin" / "__pycache__"
    assert (pycache / f"schema.{sys.implementation.cache_tag}.pyc").exists()
    assert not (pycache / f"legacy.{sys.implementation.cache_tag}.pyc").exists()


def test_install_error_names_the_wheel_that_failed(plugin_wheels, tmp_path):
    """A wheel that cannot be installed, next to good ones, in the workers."""
    bad = build_plugin(tmp_path / "bad", "delta_plugin")
    _rewrite(bad, "delta_plugin/__init__.py", b"tampered = True\n")
    build = tmp_path / "build"
    build.mkdir()
    paths = [plugin_wheels.big, plugin_wheels.alpha_v1, bad]
    # The test process may have children of its own (a PostgreSQL or PgBouncer that
    # session fixtures started): only the workers started by this call count.
    before = set(_children(os.getpid()))
    with pytest.raises(InstallError, match=f"{bad.name} cannot be installed"):
        unpack.install_wheels(
            [unpack.Wheel(p, p.name.split("-")[0], p.name) for p in paths], build, workers=2
        )
    left = [p for p in _children(os.getpid()) if p not in before and _alive(p)]
    assert not left, f"a worker outlived the error: {[_cmdline(p) for p in left]}"


# --- workers die with the install ------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:  # the process is gone
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out += [int(c) for c in fh.read().split()]
        except FileNotFoundError:  # a thread (python-gnupg's reader) just ended
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return b""


def _many_modules(tmp_path: Path) -> list[Path]:
    return [
        build_plugin(
            tmp_path / f"many{i}", f"many{i}_plugin",
            extra_files={f"many{i}_plugin/m{j:04d}.py": f"V = {j}\n" * 50 for j in range(600)},
        )
        for i in range(4)
    ]  # fmt: skip


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_workers_die_with_an_interrupted_install(how, installed, tmp_path, signing_keys, clean_env):
    """Killed mid-unpack: no worker outlives portal-boot, the previous generation stays
    in use (SIGTERM: exit 143 and the half-made build removed)."""
    target, before = installed
    folder = signed_folder(tmp_path / "many", *_many_modules(tmp_path), key=signing_keys.good)
    argv = [sys.executable, "-m", "portal_boot", "install", "--wheel-dir", str(folder),
            "--target", str(target), "--trusted-keys", str(signing_keys.trusted)]  # fmt: skip
    child = subprocess.Popen(argv, env=clean_env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)  # fmt: skip
    try:
        # The workers are forks of portal-boot: the same command line.
        workers: list[int] = []

        def forked() -> bool:
            if child.poll() is not None:
                return True
            workers[:] = [p for p in _children(child.pid) if _cmdline(p) == _cmdline(child.pid)]
            return len(workers) >= 2

        until(forked, 60, "the install to start its workers")
        assert child.poll() is None and len(workers) >= 2, "the install ended before its workers"
        child.send_signal(getattr(signal, how))
        code = child.wait(30)
        stderr = child.stderr.read().decode()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()
    until(lambda: not any(_alive(p) for p in workers), 10, "the workers to die")
    assert code == (-signal.SIGKILL if how == "SIGKILL" else 143), stderr
    assert installer.current_generation(target) is not None
    assert sorted(p.name for p in target.glob("*.dist-info")) == [
        "portal_alpha_plugin-1.0.0.dist-info"
    ]
    if how == "SIGTERM":  # the half-made build removed: the volume as it was
        assert tree(target.parent) == before
    # The next install finishes and cleans up whatever the kill left.
    again = portal_boot("install", "--wheel-dir", str(folder), "--target", str(target),
                        "--trusted-keys", str(signing_keys.trusted), env=clean_env)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert len(list(target.glob("many*_plugin"))) == 4


def test_usable_cpus_is_at_least_one():
    assert 1 <= unpack.usable_cpus() <= (os.cpu_count() or 1)
