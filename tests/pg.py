"""A PostgreSQL server for the tests: ``ROOMKIT_TEST_POSTGRES``'s, or a throwaway one.

With ``ROOMKIT_TEST_POSTGRES`` (a URL to a server), the tests create databases of their
own there, named ``roomkit_test_<pid>_<n>``, drop them after, and touch no other; they
never restart that server. Otherwise :func:`start_throwaway` runs one from the
machine's binaries (``/usr/lib/postgresql/*/bin``): ``initdb`` into a temporary
directory, on a free port of 127.0.0.1 with its Unix socket in that directory, fsync
on, as the user ``postgres`` when the tests run as root (PostgreSQL refuses root), and
stopped and removed at the end of the session.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import attrs
import psycopg

__all__ = ["PostgresServer", "Unavailable", "open_server"]

#: The user the throwaway server runs as when the tests run as root.
SERVER_USER = "postgres"


class Unavailable(Exception):
    """Raised when no PostgreSQL can be had: no ``ROOMKIT_TEST_POSTGRES``, and no
    binaries to start one from (the message says what is missing)."""


@attrs.define
class PostgresServer:
    """A server the tests may create databases on.

    Attributes:
      url: a URL to its maintenance database, for creating the tests' databases.
      data: the throwaway server's data directory, or None for ROOMKIT_TEST_POSTGRES's.
    """

    url: str
    data: Path | None
    run_as: list[str]
    bin: Path | None
    _names: Iterator[int] = attrs.field(factory=itertools.count)
    _created: list[str] = attrs.field(factory=list)
    _free: list[str] = attrs.field(factory=list)

    @property
    def restartable(self) -> bool:
        """Whether a test may restart this server: only a throwaway one."""
        return self.data is not None

    def new_database(self) -> str:
        """An empty database: its URL.

        A database given back (:meth:`give_back`) is emptied and given again: creating
        one takes 0.1 to 0.4 s here, emptying one a few milliseconds.
        """
        if self._free:
            return self._free.pop()
        name = f"roomkit_test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name} STRATEGY FILE_COPY")
        url = urlunsplit(urlsplit(self.url)._replace(path=f"/{name}"))
        self._created.append(url)
        return url

    def give_back(self, url: str) -> None:
        """Empty a database of :meth:`new_database`'s, ending whatever session is still
        connected to it, for the next test."""
        with psycopg.connect(url, autocommit=True) as db:
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            db.execute("DROP SCHEMA IF EXISTS roomkit CASCADE")
        self._free.append(url)

    def drop_databases(self) -> None:
        """Drop every database :meth:`new_database` created."""
        with psycopg.connect(self.url, autocommit=True) as admin:
            for url in self._created:
                name = urlsplit(url).path.lstrip("/")
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self._created.clear()
        self._free.clear()

    def restart(self) -> None:
        """Restart the throwaway server (``pg_ctl restart -m fast``): every connection
        to it breaks; the data stays."""
        assert self.restartable, "ROOMKIT_TEST_POSTGRES's server is never restarted"
        self._pg_ctl("restart", "-m", "fast", "-l", str(self.data / "log"))

    def _pg_ctl(self, *args: str) -> None:
        # A command that starts the server passes it a log file ("-l"): the server
        # would otherwise hold pg_ctl's output open, and this call would never end.
        assert self.bin is not None and self.data is not None
        command = [*self.run_as, str(self.bin / "pg_ctl"), "-D", str(self.data / "data")]
        subprocess.run([*command, "-w", "-s", *args], check=True, capture_output=True)


@contextmanager
def open_server() -> Iterator[PostgresServer]:
    """``ROOMKIT_TEST_POSTGRES``'s server, or a throwaway one for as long as this lasts.

    Raises:
      Unavailable: neither can be had.
    """
    url = os.environ.get("ROOMKIT_TEST_POSTGRES")
    if url:
        server = PostgresServer(url, None, [], None)
        try:
            yield server
        finally:
            server.drop_databases()
        return
    with _throwaway() as server:
        yield server


def _binaries() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parent.parent.name),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise Unavailable(
            "no PostgreSQL: set ROOMKIT_TEST_POSTGRES to a server's URL, or install "
            "PostgreSQL's server binaries (initdb, pg_ctl; Debian's postgresql package)"
        )
    return Path(initdb).parent


#: What the throwaway servers' directories are named, in the temporary directory.
PREFIX = "roomkit-pg-"


@contextmanager
def _throwaway() -> Iterator[PostgresServer]:
    bin = _binaries()
    run_as = ["runuser", "-u", SERVER_USER, "--"] if os.geteuid() == 0 else []
    _reap(bin, run_as)
    directory = Path(tempfile.mkdtemp(prefix=PREFIX))
    (directory / "session").write_text(f"{os.getpid()}\n")
    try:
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise Unavailable(
                    f"the tests run as root, and there is no user {SERVER_USER!r} to run "
                    "PostgreSQL as (PostgreSQL refuses to run as root)"
                ) from None
            os.chown(directory, user.pw_uid, user.pw_gid)
        port = _free_port()
        subprocess.run(
            [*run_as, str(bin / "initdb"), "-D", str(directory / "data"), "-A", "trust",
             "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale", "C",
             # A collation that is not code-point order ("a" < "B"), as most servers'
             # are: the store's keys must keep their order whatever the default.
             "--locale-provider", "icu", "--icu-locale", "en"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        server = PostgresServer(
            f"postgresql://postgres@127.0.0.1:{port}/postgres", directory, run_as, bin
        )
        settings = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=on"
        server._pg_ctl("start", "-l", str(directory / "log"), "-o", settings)
        try:
            yield server
        finally:
            server._pg_ctl("stop", "-m", "immediate")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _reap(bin: Path, run_as: list[str]) -> None:
    """Stop and remove the throwaway servers of test sessions that were killed (SIGTERM,
    SIGKILL: no ``finally`` ran), which would otherwise run for ever."""
    for session in Path(tempfile.gettempdir()).glob(f"{PREFIX}*/session"):
        try:
            os.kill(int(session.read_text()), 0)
            continue  # that session still runs
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue
        data = session.parent / "data"
        if _postmaster_runs(data):
            stop = [*run_as, str(bin / "pg_ctl"), "-D", str(data), "-s", "stop", "-m", "immediate"]
            subprocess.run(stop, capture_output=True)
        shutil.rmtree(session.parent, ignore_errors=True)


def _postmaster_runs(data: Path) -> bool:
    """Whether the server of ``data`` still runs: its ``postmaster.pid`` names a live
    PostgreSQL process.

    pg_ctl signals whatever process has the pid its file names, without asking what it
    is: once a dead session's server has died too, that pid may be anyone's now (pids
    come round again within 32,768 here), and a reap could SIGQUIT a process of another
    test session running at the same time.
    """
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        return "postgres" in Path(f"/proc/{pid}/comm").read_text()
    except (OSError, ValueError, IndexError):
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
