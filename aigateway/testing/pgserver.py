"""A real PostgreSQL server for tests (and the benchmark), in a temporary folder.

Uses the machine's own PostgreSQL binaries (Debian's `postgresql` package puts them in
/usr/lib/postgresql/<version>/bin). As root, `initdb` and `postgres` refuse to run, so
they run as the `postgres` user. The server listens on 127.0.0.1 only, on a free port,
and asks for a password (scram-sha-256), as a real deployment would.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .ports import free_port

USER = "aigateway"
PASSWORD = "s3cret-pw"  # a test server's, on loopback: never a real one


class PostgresUnavailable(Exception):
    """No PostgreSQL binaries on this machine."""


class PortTaken(RuntimeError):
    """Another process listens on the port the server was to take."""


PORT_TRIES = 5


def find_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if not candidates:
        raise PostgresUnavailable(
            f"{name} not found: install PostgreSQL (apt-get install -y postgresql)"
        )
    return candidates[0]


class PostgresServer:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="aigateway-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self._as_root = os.geteuid() == 0

    def _run(self, *command: str) -> subprocess.CompletedProcess[str]:
        if self._as_root:
            command = ("runuser", "-u", "postgres", "--", *command)
        return subprocess.run(command, capture_output=True, text=True, check=False)

    def start(self) -> PostgresServer:
        pwfile = self.folder / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as_root:
            shutil.chown(self.folder, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
            self.folder.chmod(0o700)
        done = self._run(
            find_bin("initdb"),
            "-D",
            str(self.data),
            "-U",
            USER,
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--no-sync",
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()}")
        # PostgreSQL cannot be told to take any free port and say which, so a port free a
        # moment ago is tried, and another if a parallel test run took it meanwhile.
        for _ in range(PORT_TRIES - 1):
            try:
                return self.resume()
            except PortTaken:
                self.port = free_port()
        return self.resume()

    def resume(self) -> PostgresServer:
        """Start the server (again, after stop(): the same data, port and password)."""
        # Loopback only, and no durability: a test server's data lives for one run.
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port}"
            f" -c unix_socket_directories={self.folder} -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        if self.has_statement_statistics:
            # Statements counted by the server itself: the round trips a request waits for.
            options += " -c shared_preload_libraries=pg_stat_statements"
        log_path = self.folder / "log"
        earlier = log_path.stat().st_size if log_path.exists() else 0
        done = self._run(
            find_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(log_path),
            "-w",
            "-t",
            "60",
            "start",
        )
        if done.returncode != 0:
            log = log_path.read_bytes()[earlier:].decode(errors="replace")[-2000:]
            error = PortTaken if "Address already in use" in log else RuntimeError
            raise error(f"PostgreSQL did not start: {done.stderr.strip()}\n{log}")
        return self

    @property
    def has_statement_statistics(self) -> bool:
        """Whether the pg_stat_statements extension is installed beside the binaries."""
        library = Path(os.path.realpath(find_bin("initdb"))).parent.parent / "lib"
        return (library / "pg_stat_statements.so").exists()

    def statement_calls(self, database: str, like: str) -> int:
        """How often statements whose text matches `like` ran in `database`, by the
        server's own count (pg_stat_statements)."""
        self.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", database)
        out = self.sql(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s"
            " JOIN pg_database d ON d.oid = s.dbid"
            f" WHERE d.datname = '{database}' AND s.query LIKE '{like}'",
            database,
        )
        return int(out.strip() or 0)

    def processes(self) -> dict[int, list[str]]:
        """The server's processes (the postmaster and its children, backends included),
        each pid with its /proc stat fields after the command name."""
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return {}
        found = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            pid = int(stat.parent.name)
            if pid == postmaster or int(fields[1]) == postmaster:  # fields[1]: the parent
                found[pid] = fields
        return found

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server and its backends (from /proc): what the
        database costs the machine, which a benchmark on one machine shares with it."""
        ticks = os.sysconf("SC_CLK_TCK")
        return sum(
            (int(fields[11]) + int(fields[12])) / ticks for fields in self.processes().values()
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement with psql; its output."""
        done = subprocess.run(
            [find_bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d", database,
             "-c", statement],
            capture_output=True, text=True, check=False,
            env={**os.environ, "PGPASSWORD": PASSWORD},
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"psql: {done.stderr.strip()}")
        return done.stdout.strip()

    def stop(self, mode: str = "fast") -> None:
        self._run(find_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)
