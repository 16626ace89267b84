"""Where registries keep their files: a small storage port and its local-directory adapter.

Keys are ``/``-separated relative paths; writes are atomic (readers see the old or the new
bytes, never a mix). An S3 adapter implements the same protocol.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import Protocol

from training.errors import RegistryError

# Temporary files of an atomic write; never listed, and recognisable after a crash.
TEMP_PREFIX = ".fraudscore-tmp-"
_DRIVE = re.compile(r"[A-Za-z]:")

KeyList = list[str]  # a method named `list` shadows the builtin inside Storage classes


class MissingKeyError(RegistryError):
    """A storage key that does not exist."""

    def __init__(self, key: str, where: str | None = None) -> None:
        self.key = key
        super().__init__(f"{where or key}: not found")


class Storage(Protocol):
    """Where the registry keeps its files: keys are ``/``-separated relative paths."""

    def read(self, key: str) -> bytes:
        """The object's bytes; :class:`MissingKeyError` if absent."""
        ...

    def write(self, key: str, data: bytes) -> None:
        """Create or replace the object atomically: readers see the old or the new bytes."""
        ...

    def exists(self, key: str) -> bool:
        """Whether the object exists."""
        ...

    def list(self, prefix: str) -> KeyList:
        """All keys starting with ``prefix`` (recursively), sorted."""
        ...

    def create(self, key: str, data: bytes) -> bool:
        """Create the object only if it does not exist yet; False (nothing written) if it does.

        Atomic across processes and replicas: of two concurrent creates of one key, exactly
        one returns True. Version numbers, job locks and activation records rely on it.
        """
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is not an error."""
        ...


def validate_key(key: str, *, prefix: bool = False) -> None:
    """Reject keys that could leave the storage root: absolute, ``..``, empty parts.

    With ``prefix=True`` the empty string and a trailing ``/`` are allowed.
    """
    if not isinstance(key, str):
        raise RegistryError(f"storage key must be a string, got {type(key).__name__}")
    body = key[:-1] if prefix and key.endswith("/") else key
    if prefix and body == "":
        return
    problem = None
    if body == "":
        problem = "it is empty"
    elif body.startswith("/") or _DRIVE.match(body):
        problem = "absolute keys are not allowed"
    elif "\\" in body or "\x00" in body:
        problem = "backslashes and NUL characters are not allowed"
    elif any(part in ("", ".", "..") for part in body.split("/")):
        problem = "empty, '.' and '..' path parts are not allowed"
    if problem is not None:
        raise RegistryError(f"invalid storage key {key!r}: {problem}")


class LocalStorage:
    """A :class:`Storage` in a local directory; writes are atomic (temp file + rename)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def path(self, key: str) -> Path:
        """The file holding ``key``, after validating it."""
        validate_key(key)
        return self.root.joinpath(*key.split("/"))

    def read(self, key: str) -> bytes:
        """The file's bytes; :class:`MissingKeyError` if absent."""
        path = self.path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise MissingKeyError(key, str(path)) from None
        except OSError as exc:
            raise RegistryError(f"{path}: cannot read ({exc.strerror or exc})") from None

    def write(self, key: str, data: bytes) -> None:
        """Write to a temp file in the same directory, fsync, then rename over the target."""
        path = self.path(key)
        tmp = path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(8)}-{path.name}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666
            )
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            _fsync_dir(path.parent)
        except OSError as exc:
            raise RegistryError(f"{path}: cannot write ({exc.strerror or exc})") from None

    def create(self, key: str, data: bytes) -> bool:
        """Write a temp file, then hard-link it to the target: the link fails if it exists.

        The target appears complete or not at all, and only one of two racing creates wins.
        """
        path = self.path(key)
        tmp = path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(8)}-{path.name}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(tmp, "xb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            _fsync_dir(path.parent)
        except OSError as exc:
            raise RegistryError(f"{path}: cannot create ({exc.strerror or exc})") from None
        return True

    def delete(self, key: str) -> None:
        """Unlink the file; a missing one is fine."""
        path = self.path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise RegistryError(f"{path}: cannot delete ({exc.strerror or exc})") from None

    def exists(self, key: str) -> bool:
        """Whether a file exists at ``key``."""
        return self.path(key).is_file()

    def list(self, prefix: str) -> KeyList:
        """All keys under the root starting with ``prefix``, sorted; temp files skipped."""
        validate_key(prefix, prefix=True)
        base_key = prefix.rpartition("/")[0]
        base = self.root.joinpath(*base_key.split("/")) if base_key else self.root
        keys: KeyList = []
        for dirpath, _dirnames, filenames in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(TEMP_PREFIX):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)


def _fsync_dir(directory: Path) -> None:
    """Persist a rename (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
