"""One writer per run folder: an exclusive lock on `RUN/run.lock`, held for as long as a process writes the run.

`flock(2)` on an open file of the folder. The kernel drops the lock when the holder's last file descriptor
closes, so a run that exits, crashes or is SIGKILLed never leaves a stale lock behind: `--resume` after a
kill just works. The file records who holds it (PID, host, command, start time), which is what a refused
second writer reports. Readers (`eval`, `export`, `sweep`, ...) take no lock: checkpoints are published
by an atomic rename, so a reader sees a complete file whatever the writer is doing.

Shared file systems: on NFS, Linux maps flock to NFS byte-range locks, which the server arbitrates
across nodes (NFSv4, or v3 with lockd); a dead node's lock lasts until its lease expires (NFSv4: about
90 s) or, on v3, until that node reboots. Mounted with `nolock` / `local_lock=flock`, or on Lustre with
`localflock`, the lock keeps out a second writer on the same node only. Where the file system refuses
locks altogether (Lustre without `-o flock`), the run goes on unprotected after a warning.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import RunFolderInUse

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
# A process that has just taken the lock writes its details a moment later; a refused one waits this long
# for them before it reports the holder as unknown.
_HOLDER_WAIT_SECONDS = 1.0
# errno values of file systems that do not implement flock (rather than a lock held by someone else).
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


@dataclass
class _Hold:
    fd: int | None  # None: the file system refused locks, nothing is held
    depth: int


# Locks this process holds, by the lock file's resolved path. A second acquisition in the same process (the
# CLI's `train` holds the folder across training and the final evaluation, and `training.train` takes it too)
# only counts up: opening and closing another descriptor of the file would drop the lock where flock is
# emulated by POSIX locks (NFS), which belong to the process, not to the descriptor.
_held: dict[str, _Hold] = {}


def _forget_in_child() -> None:
    # A forked child (a DataLoader worker, say) shares the lock through its copy of the descriptor, and would
    # keep it after the parent is killed: the run could not be resumed until the child exits too. Closing the
    # copy leaves the parent's lock as it is (flock belongs to the open file, held by the parent as well).
    for hold in _held.values():
        if hold.fd is not None:
            os.close(hold.fd)
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)


class RunFolderLock:
    """The lock on one run folder, held from `acquire_run_folder` until `release` (or the end of a `with`)."""

    def __init__(self, path: Path):
        self.path = path
        self._released = False

    def release(self) -> None:
        """Let go (after the last of nested acquisitions): remove the file while still holding it, then unlock."""
        if self._released:
            return
        self._released = True
        key = str(self.path)
        hold = _held.get(key)
        if hold is None:  # a forked child's copy of the hold (`_forget_in_child`)
            return
        hold.depth -= 1
        if hold.depth:
            return
        del _held[key]
        if hold.fd is None:
            return
        try:
            # While it is locked no one else can hold this file; one that opened it and locks it after the
            # close finds it unlinked and retries on a new file (`_lock_current_file`).
            self.path.unlink(missing_ok=True)
        finally:
            os.close(hold.fd)

    def __enter__(self) -> RunFolderLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def acquire_run_folder(run_dir: str | Path, command: str) -> RunFolderLock:
    """Create `run_dir` if needed and take its lock, or raise RunFolderInUse naming the process that holds it.

    OSError when the folder or the lock file cannot be created (the caller says which setting named it).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = Path(os.path.realpath(run_dir / LOCK_FILE))
    hold = _held.get(str(path))
    if hold is not None:
        hold.depth += 1
        return RunFolderLock(path)
    fd = _lock_current_file(path, run_dir)
    _held[str(path)] = _Hold(fd, 1)
    if fd is not None:
        _record_holder(fd, command, run_dir)
    return RunFolderLock(path)


def _lock_current_file(path: Path, run_dir: Path) -> int | None:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunFolderInUse(_in_use_message(run_dir, holder)) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno not in _UNSUPPORTED:
                raise
            log.warning("run folder %s: the file system does not support locks (%s); this run is not protected "
                        "against a second process writing the same folder", run_dir, exc.strerror or exc)
            return None
        # The previous holder may have unlinked the file between our open and our lock (it releases that
        # way): then we hold a file no one else will ever look at, and must lock the one now in the folder.
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        opened = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
            return fd
        os.close(fd)


def _record_holder(fd: int, command: str, run_dir: Path) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "run": str(run_dir)}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    except OSError as exc:
        # The lock is held all the same; only a refused process's message loses the details (disk full, say).
        log.warning("run folder %s: could not record the lock holder in %s (%s)", run_dir, LOCK_FILE,
                    exc.strerror or exc)


def _read_holder(fd: int) -> dict | None:
    deadline = time.monotonic() + _HOLDER_WAIT_SECONDS
    while True:
        try:
            holder = json.loads(os.pread(fd, 4096, 0).decode())
            if isinstance(holder, dict) and "pid" in holder:
                return holder
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def _in_use_message(run_dir: Path, holder: dict | None) -> str:
    advice = ("one process writes a run folder at a time: wait for it to end, or stop it (a stopped run continues "
              f"with: python -m generalist_trainer train --resume {run_dir}), or choose another train.out_dir")
    if holder is None:
        return f"run folder {run_dir} is in use by another process (it has not recorded its PID yet); {advice}"
    pid, host = holder.get("pid"), holder.get("host")
    note = ""
    if host == socket.gethostname() and type(pid) is int and 0 < pid < 2**31 and not _alive(pid):
        note = f"; PID {pid} has exited, but a process it started still holds the lock"
    return (f"run folder {run_dir} is in use by PID {pid} on host {host} ({holder.get('command')} started "
            f"{holder.get('started')}{note}); {advice}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True
