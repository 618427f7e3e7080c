"""One server per SQLite file: an exclusive ``flock`` on a lock file beside the database.

Two servers on one file would each run their own ``/lobby``, whose clients never meet,
both writing the same keys. Until many processes can share a file safely, the second
one refuses to start.

The lock is ``flock``, not a POSIX record lock (``fcntl.lockf``): those belong to the
process, vanish when it closes any descriptor of the file, and SQLite already uses them
on the database itself. An ``flock`` belongs to the open descriptor: it lasts until the
descriptor is closed or the process dies, even by SIGKILL, so a lock file left behind
never stops the next start. The pid written in the file only tells who holds it.

The file is ``<database>.roomkit.lock``, not ``<database>.lock``, which SQLite's
dot-file locking (its ``unix-dotfile`` VFS) would create as a directory.
"""

from __future__ import annotations

import fcntl
import os
from typing import Final

from .._errors import StorageError

__all__ = ["LOCK_SUFFIX", "LockFile"]

#: What is added to the database's path to name its lock file.
LOCK_SUFFIX: Final = ".roomkit.lock"
#: A new lock file's mode: the server's user alone. Anyone who can open the file, even
#: to read it, can flock it, and so keep the server from starting.
LOCK_MODE: Final = 0o600


class LockFile:
    """An exclusive ``flock`` on a database's lock file, held until :meth:`release`."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def acquire(cls, database: str | os.PathLike[str]) -> LockFile:
        """Lock ``database``'s lock file (creating it), and write this process's pid in it.

        Never waits: a lock held elsewhere is an error.

        Raises:
          StorageError: another server holds the lock (the message names the database
            and the holder's pid), or the lock file cannot be opened or locked.
        """
        # Beside the file the path leads to: through a symlink, it is the same database.
        path = os.path.realpath(database) + LOCK_SUFFIX
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, LOCK_MODE)
        except OSError as exc:
            raise StorageError(
                f"cannot open {_shown(path)}, the lock file of the storage file "
                f"{_shown(database)}: {exc.strerror}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StorageError(
                f"the storage file {_shown(database)} is in use by another server "
                f"({holder}), which holds {_shown(path)}; one server per storage file"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot lock {_shown(path)}: {exc.strerror}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd)

    def release(self) -> None:
        """Empty the file (its pid is no longer true) and unlock it; the file stays.

        Deleting it would let a server that had just opened the old file and one that
        creates a new file both lock "it".
        """
        try:
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)


def _holder(fd: int) -> str:
    """Who holds the lock, as the pid in its file says: ``"pid 4242"``."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    if not text.isdigit():
        return "pid unknown"
    return "pid " + text + (", this process" if int(text) == os.getpid() else "")


def _shown(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(path)
