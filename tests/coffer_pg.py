"""The storage nodes' metadata database for the pytest suites (issue 14).

``COFFER_TEST_DATABASE=postgres`` runs the suites' storage nodes on PostgreSQL: one throwaway
server for the whole session (``scripts/pg-test-server``, stopped when the session ends), and a
fresh database per node data dir, so a node restarted on the same data dir (crash tests) finds
its metadata again. Unset (or ``sqlite``), nodes keep ``meta.db`` in their data dir as always.

- ``database_args(data_dir)``: the ``serve`` flags that put ``data_dir``'s node on its database;
- ``query(data_dir, sql)``: rows of a read-only query against that node's metadata (``meta.db``
  or its PostgreSQL database), as tuples of ``str``/``int`` values;
- ``SQLITE_ONLY``: a skip mark for tests about SQLite or local metadata files.
"""

from __future__ import annotations

import atexit
import os
import socket
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENABLED = os.environ.get("COFFER_TEST_DATABASE", "sqlite") == "postgres"
SQLITE_ONLY = pytest.mark.skipif(
    ENABLED, reason="about SQLite or the node's local metadata file (COFFER_TEST_DATABASE=postgres)")

_server: dict[str, str] = {}
_dbs: dict[str, str] = {}


def _start() -> str:
    if "url" not in _server:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = subprocess.run([str(REPO / "scripts" / "pg-test-server"), "start", str(port)],
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"pg-test-server start failed: {out.stderr}")
        url, top = out.stdout.split()[:2]
        _server.update(url=url, dir=top, port=str(port))
        atexit.register(_stop)
    return _server["url"]


def _stop() -> None:
    if "dir" in _server:
        subprocess.run([str(REPO / "scripts" / "pg-test-server"), "stop", _server["dir"]],
                       capture_output=True, timeout=60)
        _server.clear()


def _psql(url: str, sql: str) -> str:
    out = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                          "-d", url, "-c", sql], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"psql failed: {out.stderr}")
    return out.stdout


def fresh_database() -> str:
    """A new database on the session's server (started if needed), whatever the switch says:
    for tests that need PostgreSQL itself (several nodes on one database)."""
    base = _start()
    name = "m_" + uuid.uuid4().hex[:16]
    _psql(base, f"CREATE DATABASE {name}")
    return base.rsplit("/", 1)[0] + "/" + name


def available() -> bool:
    """PostgreSQL server binaries are installed (scripts/setup installs them)."""
    return any(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


def database_url(data_dir: Path | str) -> str | None:
    """The PostgreSQL URL of ``data_dir``'s node (created on first use), or None on SQLite."""
    if not ENABLED:
        return None
    key = str(Path(data_dir).resolve())
    if key not in _dbs:
        _dbs[key] = fresh_database()
    return _dbs[key]


def server_dir() -> Path:
    """The session's PostgreSQL server directory (its data files, WAL and log)."""
    _start()
    return Path(_server["dir"])


def database_args(data_dir: Path | str) -> list[str]:
    url = database_url(data_dir)
    return ["--database-url", url] if url else []


def query(data_dir: Path | str, sql: str) -> list[tuple]:
    """Rows of ``sql`` on ``data_dir``'s metadata (integers as int, the rest as str)."""
    url = database_url(data_dir)
    if url is None:
        db = sqlite3.connect(f"file:{Path(data_dir) / 'meta.db'}?mode=ro", uri=True)
        try:
            return [tuple(r) for r in db.execute(sql)]
        finally:
            db.close()

    def cell(v: str):
        return int(v) if v.lstrip("-").isdigit() else v
    return [tuple(cell(v) for v in line.split("\t"))
            for line in _psql(url, sql).splitlines() if line]
