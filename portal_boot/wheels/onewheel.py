"""One staged wheel into a build folder: each file checked against the wheel's RECORD
(sha256 and size) as it streams from the zip, in 1 MiB blocks, and its bytecode written
from the bytes in hand. PyPA's ``installer`` lays the files out. Used in this process or
by the workers of :mod:`portal_boot.wheels.unpack`, which says why it is done this way.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import sys
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from portal_boot.errors import InstallError

_BLOCK = 1 << 20
_KEEP_SOURCE = 8 << 20  # a .py file up to this size is compiled from the bytes written


@dataclasses.dataclass(frozen=True)
class Wheel:
    path: Path  # the staged (verified) copy
    name: str  # distribution name: the headers scheme's folder
    file: str  # the wheel's file name, for messages


class _Mismatch(Exception):
    pass


class _CheckedStream:
    """A zip member's stream that hashes and counts what is read; ``finish`` reads the
    rest and compares with the wheel's RECORD entry."""

    def __init__(self, stream: BinaryIO, name: str, algorithm: str, value: str, size: int):
        self._stream, self._name = stream, name
        self._algorithm, self._value, self._size = algorithm, value, size
        self._reset()

    def _reset(self) -> None:
        self._hash = hashlib.new(self._algorithm)
        self._read = 0

    def _seen(self, data: bytes) -> bytes:
        self._hash.update(data)
        self._read += len(data)
        return data

    def read(self, size: int = -1) -> bytes:
        return self._seen(self._stream.read(size))

    def readline(self, size: int = -1) -> bytes:
        return self._seen(self._stream.readline(size))

    def seek(self, offset: int, whence: int = 0) -> int:
        if offset != 0 or whence != 0:  # installer only rewinds (to fix a script's shebang)
            raise OSError("only a rewind to the start is supported")
        self._stream.seek(0)
        self._reset()
        return 0

    def tell(self) -> int:
        return self._read

    def finish(self) -> None:
        while self.read(_BLOCK):
            pass
        digest = base64.urlsafe_b64encode(self._hash.digest()).decode().rstrip("=")
        if self._read != self._size or digest != self._value:
            raise _Mismatch(f"hash / size of {self._name} didn't match RECORD")


def _checked_source(archive: zipfile.ZipFile) -> Any:
    from installer.records import RecordEntry
    from installer.sources import WheelFile

    class CheckedWheel(WheelFile):  # type: ignore[misc]
        """Every file that has a RECORD hash is checked as it is read (once)."""

        def get_contents(self) -> Iterator[tuple[Any, Any, bool]]:
            for elements, stream, executable in super().get_contents():
                entry = RecordEntry.from_elements(*elements)
                # validate_record(validate_contents=False) made sure that only RECORD
                # itself and its signature files have no hash or size.
                if entry.hash_ is None or entry.size is None:
                    yield elements, stream, executable
                    continue
                checked = _CheckedStream(
                    stream, entry.path, entry.hash_.name, entry.hash_.value, entry.size
                )
                yield elements, checked, executable
                checked.finish()  # also for a file installer skipped (a __pycache__ one)

    return CheckedWheel(archive)


class _Compiler:
    """Writes the ``.pyc`` of a source that was just written, from the bytes in hand.

    What ``py_compile.compile`` writes (the same header, invalidation mode and file
    mode; ``SOURCE_DATE_EPOCH`` selects checked-hash pycs as it does), without reading
    the source back, probing for an old pyc or writing through a temporary file and a
    rename: the build folder is new and private, nobody reads it until it is
    published. Without the importlib helpers (another Python), ``py_compile`` does it.
    """

    def __init__(self) -> None:
        import importlib._bootstrap_external as external
        import importlib.util

        self._cache_from_source = importlib.util.cache_from_source
        self._source_hash = importlib.util.source_hash
        self._timestamp_pyc = getattr(external, "_code_to_timestamp_pyc", None)
        self._hash_pyc = getattr(external, "_code_to_hash_pyc", None)
        self._checked_hash = bool(os.environ.get("SOURCE_DATE_EPOCH"))
        self._dirs: set[str] = set()
        self.errors: list[str] = []

    def __call__(self, path: str, source: bytes | None, mode: int) -> None:
        if self._timestamp_pyc is None or self._hash_pyc is None:
            self._fallback(path)
            return
        if source is None:  # too big to have been kept while it was written
            with open(path, "rb") as fh:
                source = fh.read()
        try:
            code = compile(source, path, "exec", dont_inherit=True)
        except Exception as exc:  # noqa: BLE001 - SyntaxError, ValueError...: reported
            self.errors.append(f"{path}: {type(exc).__name__}: {exc}")
            return
        if self._checked_hash:
            data = self._hash_pyc(code, self._source_hash(source), True)
        else:
            stat = os.stat(path)
            data = self._timestamp_pyc(code, stat.st_mtime, stat.st_size)
        cfile = self._cache_from_source(path)
        folder = os.path.dirname(cfile)
        if folder not in self._dirs:
            os.makedirs(folder, exist_ok=True)
            self._dirs.add(folder)
        fd = os.open(cfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, (mode | 0o200) & 0o666)
        with open(fd, "wb") as out:
            out.write(data)

    def _fallback(self, path: str) -> None:
        import py_compile

        try:
            py_compile.compile(path, doraise=True)
        except py_compile.PyCompileError as exc:
            self.errors.append(f"{path}: {exc.exc_type_name}: {exc.exc_value}")


def _destination(schemes: dict[str, str], compiler: _Compiler | None) -> Any:
    from installer.destinations import SchemeDictionaryDestination
    from installer.records import Hash, RecordEntry

    umask = os.umask(0o022)  # read it (it can only be read by setting it)
    os.umask(umask)
    dirs: set[str] = set()

    class Destination(SchemeDictionaryDestination):  # type: ignore[misc]
        """Files are created with O_EXCL (a clash is found even when two workers write
        the same path at once); a ``.py`` file is compiled as soon as it is written."""

        def write_to_fs(self, scheme: Any, path: str, stream: BinaryIO, is_executable: bool) -> Any:
            root = os.path.abspath(self.scheme_dict[scheme])
            target = os.path.abspath(os.path.join(root, path))  # ".." resolved
            if not target.startswith(root + os.sep):
                raise ValueError(f"Attempting to write {path} outside of the target directory")
            folder = os.path.dirname(target)
            if folder not in dirs:
                os.makedirs(folder, exist_ok=True)
                dirs.add(folder)
            hasher = hashlib.new(self.hash_algorithm)
            size = 0
            keep: list[bytes] | None = [] if compiler and target.endswith(".py") else None
            with open(target, "xb") as out:  # FileExistsError: another wheel wrote it
                while block := stream.read(_BLOCK):
                    hasher.update(block)
                    out.write(block)
                    size += len(block)
                    if keep is not None:
                        keep.append(block)
                        if size > _KEEP_SOURCE:
                            keep = None  # read back when compiled
            mode = 0o666 & ~umask
            if is_executable:
                mode = 0o777 & ~umask | 0o111  # as pip and installer do
                os.chmod(target, mode)
            if compiler and target.endswith(".py"):
                compiler(target, b"".join(keep) if keep is not None else None, mode)
            digest = base64.urlsafe_b64encode(hasher.digest()).decode().rstrip("=")
            return RecordEntry(path, Hash(self.hash_algorithm, digest), size)

    return Destination(schemes, interpreter=sys.executable, script_kind="posix")


def install_one(wheel: Wheel, build: Path, compile_: bool) -> tuple[list[str], list[str]]:
    """Install one wheel into ``build``: (warnings, sources that did not compile).
    Raises InstallError with the message the caller shows."""
    from installer import install as install_wheel
    from installer.exceptions import InstallerError

    # pip --target's layout: libraries at the root, scripts in bin/.
    schemes = {
        "purelib": str(build),
        "platlib": str(build),
        "scripts": str(build / "bin"),
        "headers": str(build / "include" / wheel.name),
        "data": str(build),
    }
    compiler = _Compiler() if compile_ else None
    destination = _destination(schemes, compiler)
    try:
        with warnings.catch_warnings(record=True) as caught, zipfile.ZipFile(wheel.path) as zf:
            warnings.simplefilter("always")
            source = _checked_source(zf)
            source.validate_record(validate_contents=False)
            install_wheel(source, destination, {"INSTALLER": b"portal-boot\n"})
    except FileExistsError as exc:
        clash = str(exc.filename or exc).replace(f"{build}/", "")
        raise InstallError(
            f"{wheel.file} clashes with another wheel ({clash}): remove one of them"
        ) from None
    except (InstallerError, _Mismatch, ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
        detail = "; ".join(getattr(exc, "issues", [])[:2]) or str(exc)
        raise InstallError(f"{wheel.file} cannot be installed: {detail}") from None
    errors = compiler.errors if compiler else []
    return [str(w.message) for w in caught], [e.replace(f"{build}/", "") for e in errors]
