"""Crash-safe files and directories, and one run per output directory.

Everything a run saves appears under its final name only once it is completely written:

* :func:`atomic_write_text` writes a file through a temporary sibling and ``os.replace``.
* :func:`replace_dir` moves a fully written staging directory onto its final name. Where the OS
  can swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``) there is never a moment
  without the directory; elsewhere the old one is first renamed to ``.<name>.old``, and
  :func:`recover_dir` (called by the loaders and savers) puts it back if a crash fell between the
  two renames.
* :func:`write_failure` tells a write the user can fix (a full disk, a quota, a read-only or
  forbidden place) from a bug, so the jobs can say it in one line (:class:`WriteError`).
* :class:`RunLock` holds an OS lock (``fcntl.flock``) on ``<output_dir>/.ms_gpt2.lock`` for the
  whole run. The kernel drops it when its holder dies, even by SIGKILL, so a lock file left
  behind by a dead run is simply taken over (with a warning); a live holder makes a second run
  refuse with a :class:`RunDirInUseError` naming its pid, host and command.
"""
from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

from ms_gpt2.infra.errors import UserError

log = logging.getLogger(__name__)

LOCK_FILE = ".ms_gpt2.lock"


#: errno values of a write that failed for a reason the user can fix; ENOSPC and EDQUOT: no room
WRITE_ERRNOS = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG,
                                           errno.EROFS, errno.EACCES, errno.EPERM) if code is not None)
NO_ROOM = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None)


class WriteError(UserError):
    """A file of the run could not be written (disk full, quota, read-only, permissions)."""


def write_failure(err: BaseException) -> OSError | None:
    """The OSError behind ``err`` (itself, or one it was raised from) when it is one of
    :data:`WRITE_ERRNOS`, else None. Writers that are not Python's own report the errno in their
    message (safetensors: ``SafetensorError: ... No space left on device (os error 28)``, Rust's
    ``io::Error``); those are recognised too."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
            return err
        found = re.search(r"\(os error (\d+)\)|\bOs \{ code: (\d+)", str(err))
        code = int(found.group(1) or found.group(2)) if found else None
        if code in WRITE_ERRNOS:
            return OSError(code, os.strerror(code))
        err = err.__cause__ or err.__context__
    return None


def describe_write_failure(err: OSError) -> str:
    """``No space left on device (ENOSPC)``: the reason, with the errno's name for searching."""
    return f"{os.strerror(err.errno)} ({errno.errorcode.get(err.errno, err.errno)})"


def staging_name(target) -> Path:
    """Where ``target`` is written before it is complete: a hidden sibling no glob of checkpoints sees."""
    target = Path(target)
    return target.with_name(f".{target.name}.partial")


def _old_names(target: Path) -> list[Path]:
    return [target.with_name(f".{target.name}.old"), target.with_name(f"{target.name}.old")]  # 2nd: older versions


def fsync_dir(path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path) -> None:
    """Flush every file under ``path`` (and the directories) to disk."""
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(root)


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` so a crash leaves either the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding=encoding) as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)
    return path


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the OS or filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # no glibc >= 2.28
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, f"cannot swap {a} and {b}: {os.strerror(code)}")


def recover_dir(target) -> Path:
    """Finish a :func:`replace_dir` that crashed between its renames: restore the old directory."""
    target = Path(target)
    if not target.exists():
        for old in _old_names(target):
            if old.is_dir():
                os.replace(old, target)
                log.warning("%s was missing after an interrupted save; restored the previous copy from %s",
                            target, old.name)
                break
    return target


def replace_dir(staging, target) -> Path:
    """Move the complete directory ``staging`` to ``target`` (replacing any), flushed to disk first."""
    staging, target = Path(staging), Path(target)
    fsync_tree(staging)
    recover_dir(target)
    if not target.exists():
        os.replace(staging, target)
    elif _exchange(staging, target):
        shutil.rmtree(staging)  # now the previous contents
    else:
        old = _old_names(target)[0]
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)  # a crash before this line: recover_dir() restores `old`
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(target.parent)
    return target


class RunDirInUseError(UserError, RuntimeError):
    """Another live run holds the output directory."""


def _describe(holder: dict) -> str:
    cmd = " ".join(str(holder.get("cmd", "?")).split())  # one line
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}: {cmd}"


def _command_line() -> str:
    try:
        with open("/proc/self/cmdline", "rb") as handle:
            return " ".join(part.decode(errors="replace") for part in handle.read().split(b"\0") if part)
    except OSError:
        return " ".join([sys.executable, *sys.argv])


class RunLock:
    """``with RunLock(output_dir):`` -- this process is the only run writing there."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.fd = None

    def acquire(self) -> "RunLock":
        import fcntl

        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunDirInUseError(f"{self.directory} is in use by another run ({_describe(holder)}); "
                                       f"wait for it to finish or use another --output-dir") from None
            # the holder we waited on may have removed the file as it released it: lock the current one
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder(fd)
        if previous:
            log.warning("%s: taking over the lock left by a run that is no longer alive (%s)",
                        self.directory, _describe(previous))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "cmd": _command_line(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        # remove the file while still holding the lock (a waiter re-checks the inode), so a lock
        # file found later always means a run that died
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd) -> dict:
    try:
        raw = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        return json.loads(raw) if raw else {}
    except (OSError, ValueError):
        return {"pid": "?", "cmd": "(unreadable lock file)"}
