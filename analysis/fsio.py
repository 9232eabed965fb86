"""File-system safety: writable outputs checked up front, atomic writes, a run-folder lock.

* :func:`check_output_file` / :func:`check_output_dir` refuse, before any work,
  an output that cannot be written: a folder where a file is wanted (or the
  reverse), a read-only or unwritable place. They create nothing that stays.
* :func:`write_atomic` writes a temp file in the target's folder, flushes it to
  disk and renames it over the target: a reader sees the old file or the new
  one, never half of one. On failure (disk full, read-only) the temp file is
  removed and the old file is left as it was.
* :func:`exclusive_lock` makes one writer per run folder: a lock file created
  with ``O_EXCL`` holding the owner's pid, host and command. A lock whose owner
  no longer runs (same host, pid gone) is stale: reported and taken over. A
  live owner, or one on another host, is refused unless ``force``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from analysis.errors import UserInputError


class OutputError(UserInputError):
    """An output path cannot be written; the message names it and says why."""


class LockError(UserInputError):
    """The run folder is locked by another writer; the message names it and what to do."""


# ------------------------------------------------------------------------------- outputs


def _existing_ancestor(path: Path) -> Path:
    """The nearest of ``path`` and its parents that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def _probe_writable(folder: Path, what: str, target: Path) -> None:
    """Create and remove a temp file in ``folder``: true for read-only mounts and root alike."""
    if not folder.is_dir():
        raise OutputError(f"{what} {target}: {folder} is a file, not a folder.")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".vsink-probe-")
    except OSError as err:
        raise OutputError(f"{what} {target}: cannot write in {folder} ({_reason(err)}).") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: str | os.PathLike[str] | None, what: str = "output") -> Path | None:
    """``path`` as a Path when a file can be written there (folders created later); else
    :class:`OutputError`. None passes through (no output asked for)."""
    if path is None:
        return None
    target = Path(path).expanduser()
    if target.is_dir():
        raise OutputError(f"{what} {target} is a folder; give a file name.")
    if target.exists() and not os.access(target, os.W_OK):
        raise OutputError(f"{what} {target} exists and is not writable.")
    _probe_writable(_existing_ancestor(target.parent), what, target)
    return target


def check_output_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """``path`` as a Path when it is (or can become) a writable folder; else :class:`OutputError`."""
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise OutputError(f"{what} {target} is a file, not a folder.")
    _probe_writable(_existing_ancestor(target), what, target)
    return target


def _flush_to_disk(fd: int) -> None:
    os.fsync(fd)


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename.

    The temp file is removed on any failure, and ``path`` keeps its old content.
    """
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            _flush_to_disk(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def _reason(err: OSError) -> str:
    return err.strerror or errno.errorcode.get(err.errno or 0, "") or str(err)


def describe_os_error(err: OSError) -> str:
    """One line for a file-system fault: what failed, on which path, and why."""
    name = err.filename or ""
    hints = {
        errno.ENOSPC: "the disk is full; free space and rerun (finished work is kept)",
        errno.EROFS: "the file system is read-only; choose another output place",
        errno.EACCES: "permission denied; choose another output place",
        errno.EISDIR: "it is a folder; give a file name",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
    }
    hint = hints.get(err.errno or 0, _reason(err))
    return f"cannot write {name}: {hint}." if name else f"file-system error: {hint}."


# ------------------------------------------------------------------------------- lock


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock: pid and host, when it started, and the command line."""

    pid: int
    host: str
    started: str
    command: str

    @classmethod
    def me(cls) -> LockOwner:
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            started=datetime.now(UTC).isoformat(timespec="seconds"),
            command=" ".join(sys.argv),
        )

    def is_me(self) -> bool:
        return self.pid == os.getpid() and self.host == socket.gethostname()

    def running(self) -> bool | None:
        """True or False on this host; None for another host (it cannot be checked)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by someone else
            return True
        return True

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.started} ({self.command})"


def read_lock(path: Path) -> LockOwner | None:
    """The owner recorded in a lock file; None when there is none or it is unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return LockOwner(
            pid=int(data["pid"]),
            host=str(data["host"]),
            started=str(data.get("started", "?")),
            command=str(data.get("command", "?")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _create(path: Path, owner: LockOwner) -> bool:
    """Create ``path`` holding ``owner``, atomically with its content; False when it exists.

    The content is written to a temp file first and hard-linked into place
    (``link`` fails when the name exists), so a reader never sees an empty lock.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(owner)) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive create instead
            try:
                out = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(out, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(asdict(owner)) + "\n")
        return True
    finally:
        os.unlink(tmp)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str], *, force: bool = False) -> Iterator[LockOwner]:
    """Hold the lock file ``path`` (its folder is created) for the ``with`` block.

    Re-entrant within one process. A folder this call created and left empty
    is removed again, so a refused or failed run leaves nothing behind.
    """
    lock = Path(path).expanduser()
    folder = lock.parent
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    me = LockOwner.me()
    if not _create(lock, me):
        other = read_lock(lock)
        if other is not None and other.is_me():
            yield other  # the caller already holds it: the outer block releases it
            return
        state = None if other is None else other.running()
        if state is not False and not force:
            if other is None:
                raise LockError(
                    f"{folder} holds an unreadable lock file {lock.name}; pass --force if no "
                    "other run uses this folder."
                )
            where = (
                "still running"
                if state
                else "on another host, so it cannot be checked whether it still runs"
            )
            raise LockError(
                f"{folder} is in use by {other.describe()}, {where}; wait for it to finish, "
                f"use another folder, or pass --force if that process is gone."
            )
        held = "an unreadable lock" if other is None else f"the lock of {other.describe()}"
        reason = "forced" if force and state is not False else "stale: not running"
        warnings.warn(f"{folder}: taking over {held} ({reason}).", stacklevel=3)
        lock.unlink(missing_ok=True)
        if not _create(lock, me):
            raise LockError(f"{folder}: another process took the lock first; try again.")
    try:
        yield me
    finally:
        holder = read_lock(lock)
        if holder is not None and holder.is_me():
            lock.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
