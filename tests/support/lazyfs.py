"""A FUSE filesystem that keeps only what was fsynced when the power goes (tests only).

    python -m tests.support.lazyfs LIVE DISK MOUNTPOINT

What processes see at MOUNTPOINT is LIVE (a plain passthrough). DISK is what survives a
power loss: file data reaches it only on fsync (the whole file is copied then); directory
changes (create, mkdir, rename, unlink, rmdir) reach it at once, as on a journaled
filesystem. `mkdir MOUNTPOINT/.lazyfs-sync` copies every file to DISK (the `sync` command; rmdir it
after);
`fusermount3 -u MOUNTPOINT` unmounts and ends the process.
"Power loss" is: kill -9 the processes writing, unmount, and start them again on DISK.
Like Jepsen's LazyFS, in spirit: writes not yet synced are lost; simpler in that data is
synced per whole file, and metadata never lost.

Needs libfuse3 (Debian `fuse3`) and `mfusepy`: `make lazyfs` installs both.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import mfusepy

# `mkdir MOUNTPOINT/.lazyfs-sync` (an empty directory, remove it after) syncs every file.
SYNC_ALL = "/.lazyfs-sync"
STAT_FIELDS = (
    "st_mode",
    "st_nlink",
    "st_uid",
    "st_gid",
    "st_size",
    "st_atime",
    "st_mtime",
    "st_ctime",
)


class LazyFS(mfusepy.Operations):  # type: ignore[misc]
    """Passthrough to `live`; `disk` gets file data on fsync, directory changes at once."""

    use_ns = True

    def __init__(self, live: Path, disk: Path) -> None:
        self.live = live
        self.disk = disk
        self.mutex = threading.Lock()

    def _live(self, path: str) -> str:
        return str(self.live) + path

    def _disk(self, path: str) -> str:
        return str(self.disk) + path

    def _sync(self, path: str) -> None:
        with self.mutex:
            shutil.copyfile(self._live(path), self._disk(path))

    def sync_all(self) -> None:
        """Copy every file of LIVE to DISK (what `sync` would make durable)."""
        for root, _dirs, files in os.walk(self.live):
            rel = root[len(str(self.live)) :]
            os.makedirs(self._disk(rel or "/"), exist_ok=True)
            for name in files:
                self._sync(f"{rel}/{name}")

    # Reads and data writes: LIVE only.
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        try:
            st = os.lstat(self._live(path))
        except OSError as exc:
            raise mfusepy.FuseOSError(exc.errno) from None
        return {name: getattr(st, name) for name in STAT_FIELDS}

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._live(path))]

    def open(self, path: str, flags: int) -> int:
        return os.open(self._live(path), flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        os.truncate(self._live(path), length)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self._sync(path)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._live(path))
        return {
            name: getattr(st, name)
            for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_namemax")
        }

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._live(path), mode)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        os.utime(self._live(path), ns=times)
        return 0

    # Directory changes: LIVE and DISK.
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        fd = os.open(self._live(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with self.mutex:
            os.close(os.open(self._disk(path), os.O_WRONLY | os.O_CREAT, mode))
        return fd

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._live(path), mode)
        with self.mutex:
            os.makedirs(self._disk(path), exist_ok=True)
        if path == SYNC_ALL:
            self.sync_all()
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._live(path))
        with self.mutex:
            shutil.rmtree(self._disk(path), ignore_errors=True)
        return 0

    def unlink(self, path: str) -> int:
        os.unlink(self._live(path))
        with self.mutex, contextlib.suppress(FileNotFoundError):
            os.unlink(self._disk(path))
        return 0

    def rename(self, old: str, new: str) -> int:
        os.rename(self._live(old), self._live(new))
        with self.mutex:
            try:
                os.rename(self._disk(old), self._disk(new))
            except FileNotFoundError:
                raise mfusepy.FuseOSError(errno.EIO) from None
        return 0


def main(argv: list[str]) -> None:
    live, disk, mountpoint = (Path(a).absolute() for a in argv)
    for path in (live, disk, mountpoint):
        path.mkdir(parents=True, exist_ok=True)
    fs = LazyFS(live, disk)
    mfusepy.FUSE(fs, str(mountpoint), foreground=True, nothreads=True)


if __name__ == "__main__":
    main(sys.argv[1:])
