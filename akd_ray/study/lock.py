"""One study, one owner: `tune` holds an exclusive lock on `<storage>/<name>/` while it runs. No Ray.

The lock is an advisory `flock` on `<storage>/<name>/study.lock`, which also says who holds it (host,
pid, start time) for the message a second `tune` prints. The kernel drops a flock when its holder
exits in any way (Ctrl-C, SIGKILL, a crash), so a lock whose holder is gone is simply taken over; on a
cluster the lock lives in the shared storage (flock works across hosts on NFSv4 and most cluster file
systems). `status`, `report` and `ui` never take it: they only read.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from pathlib import Path

from akd_ray.config import ConfigError

LOCK_FILE = "study.lock"


class StudyRunning(ConfigError):
    """Another process holds the study's lock: `tune` refuses (exit 2) and says who."""


class StudyLock:
    """`with StudyLock(root, name, study_file):` -- held for the block, released on any exit."""

    def __init__(self, root: Path, name: str, study_file: str | Path | None = None):
        self.path = Path(root) / LOCK_FILE
        self.name, self.study_file = name, study_file or name
        self.fd: int | None = None

    def acquire(self) -> "StudyLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StudyRunning(self._refusal()) from None
            # the file may have been unlinked by its last holder between our open and our flock:
            # then we hold a lock nobody else can see; open the file at the path again
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            os.close(fd)
        holder = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def refuse_if_held(self) -> None:
        """Raise StudyRunning if another process holds the lock; takes nothing and makes nothing."""
        if holder_of(self.path.parent) is not None:
            raise StudyRunning(self._refusal())

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # while still held: nobody can have locked the file we remove
        os.close(fd)  # drops the flock

    def _refusal(self) -> str:
        holder = holder_of(self.path.parent) or {}
        where = f"pid {holder.get('pid', '?')}" + (f" on {holder['host']}" if holder.get("host") not in
                                                   (None, socket.gethostname()) else "")
        return (f"study {self.name} is running ({where}, started {holder.get('started', '?')}): "
                f"watch it with `akd-ray status {self.study_file}`")

    __enter__ = acquire

    def __exit__(self, *exc) -> None:
        self.release()


def holder_of(root: Path) -> dict | None:
    """Who holds the lock of the study at `root` (host, pid, started), as it wrote; None when no one."""
    path = Path(root) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):  # no study there (yet), or a storage preflight refuses
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held: read what the holder wrote
            with contextlib.suppress(ValueError, OSError):
                return json.loads(path.read_text())
            return {}
        fcntl.flock(fd, fcntl.LOCK_UN)  # nobody holds it: a leftover file
        return None
    finally:
        os.close(fd)
