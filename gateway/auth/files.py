"""Files re-read when they change: the one reload rule of certificates, keys and policies.

A change is seen by comparing each file's (device, inode, size, mtime in ns): an atomic
rename, which is how Kubernetes secrets and cert-manager rotate files, changes the inode; an
edit in place changes the mtime or the size. The files are read together by the caller's
`load` (a certificate and its key must match), with the signature taken *before* reading, so
a change during the read is seen again at the next check.

If `load` fails, the reason is logged once for that state of the files and the last good
value stays: a half-written rotation never takes the listener down, and the next change
(e.g. the key written after its certificate) is tried again. Only the first load raises:
a gateway must not start with a broken file.

Checks are throttled by `min_interval` for callers on a hot path (one stat per file per
check). Thread-safe: grpc calls the TLS certificate fetcher on its own threads.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

Signature = tuple[tuple[int, int, int, int] | None, ...]


def signature(paths: Sequence[Path]) -> Signature:
    """(device, inode, size, mtime_ns) of each file; None for one that cannot be read."""
    parts: list[tuple[int, int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            parts.append(None)
        else:
            parts.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(parts)


class ReloadingFiles(Generic[T]):
    """The value `load` makes of `paths`, made again when one of the files changes."""

    def __init__(
        self,
        paths: Sequence[Path],
        load: Callable[[], T],
        *,
        what: str,
        min_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._paths = tuple(paths)
        self._load = load
        self._what = what
        self._min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._seen = signature(self._paths)
        self._value = load()  # raises: a broken file at start-up is fatal
        self._checked = clock()

    @property
    def value(self) -> T:
        """The last good value, without checking the files."""
        return self._value

    def current(self) -> T:
        """The value, re-read first if `min_interval` has passed and a file changed."""
        if self._clock() - self._checked >= self._min_interval:
            self.refresh()
        return self._value

    def refresh(self) -> bool:
        """Check the files now (e.g. on SIGHUP); True when a new value was loaded."""
        with self._lock:
            self._checked = self._clock()
            now = signature(self._paths)
            if now == self._seen:
                return False
            # Recorded before loading: a broken state is logged once, not at every check.
            self._seen = now
            try:
                value = self._load()
            except Exception as exc:
                log.error(
                    "%s: keeping the previous version, the changed files could not be loaded: %s",
                    self._what,
                    exc,
                )
                return False
            self._value = value
            log.info("%s: reloaded from %s", self._what, ", ".join(map(str, self._paths)))
            return True
