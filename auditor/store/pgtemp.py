"""A throwaway local PostgreSQL cluster: for the test suite, the benchmark, and trying
the PostgreSQL store on one machine without a server to administer.

It runs Debian's `initdb`/`pg_ctl` in a private temporary directory, listens on a
Unix socket in that directory and on 127.0.0.1 at a free port, and removes
everything on `stop()`. `initdb` refuses to run as root, so as root the cluster
runs as the `postgres` system user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

from auditor.errors import AuditorError

_SUPERUSER = "auditor"


def find_bindir() -> Path:
    """The newest installed server binaries (`PG_BINDIR` overrides)."""
    if env := os.environ.get("PG_BINDIR"):
        return Path(env)
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if not candidates:
        raise AuditorError(
            "no PostgreSQL server binaries (initdb, pg_ctl) found",
            fix="apt-get install -y postgresql, or set PG_BINDIR",
        )
    return Path(candidates[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TempCluster:
    """`start()` returns once the server accepts connections; `stop()` removes it all."""

    def __init__(self, *, password: str = "auditor-test", durable: bool = True) -> None:
        self.password = password
        self.durable = durable
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="auditor-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.bindir = find_bindir()
        self._as_postgres = os.geteuid() == 0

    @property
    def user(self) -> str:
        return _SUPERUSER

    def url(self, dbname: str = "postgres", **params: str) -> str:
        """A Unix-socket URL: no password needed (peer-less `trust` on the private socket)."""
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in {"host": str(self.socket_dir), "port": str(self.port), **params}.items())
        return f"postgresql://{_SUPERUSER}@/{dbname}?{query}"

    def tcp_url(self, dbname: str = "postgres", *, with_password: bool = False) -> str:
        """A loopback TCP URL; TCP requires the password (scram-sha-256)."""
        secret = f":{quote(self.password, safe='')}" if with_password else ""
        return f"postgresql://{_SUPERUSER}{secret}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str) -> None:
        cmd = [str(a) for a in args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise AuditorError(f"{Path(args[0]).name} failed: {(proc.stderr or proc.stdout).strip()[-400:]}")

    def start(self) -> TempCluster:
        self.socket_dir.mkdir(parents=True)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as_postgres:
            pg = pwd.getpwnam("postgres")
            for path in (self.root, self.socket_dir, pwfile):
                os.chown(path, pg.pw_uid, pg.pw_gid)
        self._run(
            self.bindir / "initdb", "-D", self.data, "-U", _SUPERUSER, "--pwfile", pwfile,
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
        )
        pwfile.unlink()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": "100",
            "shared_buffers": "128MB",
            "logging_collector": "off",
        }
        if not self.durable:  # tests only: the server is never killed, only writers are
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
        self._run(self.bindir / "pg_ctl", "-D", self.data, "-l", self.root / "server.log", "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(self.bindir / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TempCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """`python -m auditor.store.pgtemp`: a throwaway cluster until Ctrl-C, to try the
    PostgreSQL store on one machine."""
    import signal  # noqa: PLC0415

    stop_on = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_on)
    cluster = TempCluster().start()
    print(cluster.url("postgres"), flush=True)
    try:
        signal.sigwait(stop_on)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
