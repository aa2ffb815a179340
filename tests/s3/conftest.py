"""Fixtures of the plain S3 suite (issue 3): one real ``coffer-storage`` process per session on
127.0.0.1:0 with a temp data dir and no KMS (``--default-encryption none``), boto3 clients for it,
and its stderr printed when a test fails. ``COFFER_BIN_DIR`` overrides ``target/debug``;
``COFFER_TEST_DATABASE=postgres`` puts every node's metadata on PostgreSQL (``tests/coffer_pg.py``)."""

from __future__ import annotations

import os
import secrets
import subprocess
import threading
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

import coffer_blobstore
import coffer_pg

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("COFFER_BIN_DIR", REPO / "target" / "debug"))
ACCESS_KEY = "coffer-s3-test"
SECRET_KEY = "s3-secret-" + secrets.token_hex(12)
REGION = "us-east-1"
READY_TIMEOUT = float(os.environ.get("COFFER_READY_TIMEOUT", "60"))


class Node:
    """A running storage node; ready once it printed ``listening on http://ADDR``."""

    def __init__(self, data_dir: Path, log_dir: Path, extra_args: list[str] | None = None):
        self.data_dir = data_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = log_dir / f"storage-{uuid.uuid4().hex[:6]}.stderr.log"
        self._stderr = open(self.stderr_path, "wb")
        env = dict(os.environ, COFFER_S3_ACCESS_KEY=ACCESS_KEY, COFFER_S3_SECRET_KEY=SECRET_KEY,
                   RUST_LOG=os.environ.get("RUST_LOG", "info"), NO_COLOR="1")
        self.proc = subprocess.Popen(
            [str(BIN_DIR / "coffer-storage"), "serve", "--data-dir", str(data_dir),
             "--listen", "127.0.0.1:0", "--default-encryption", "none",
             *coffer_pg.database_args(data_dir),
             *([] if "--blob-store" in (extra_args or []) else coffer_blobstore.blob_args(data_dir)),
             *(extra_args or [])],
            stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        self.endpoint = self._wait_ready()

    def _wait_ready(self) -> str:
        found: list[str] = []

        def read() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").strip()
                if line.startswith("listening on ") and not found:
                    found.append(line.removeprefix("listening on "))
        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(0)
        import time
        deadline = time.monotonic() + READY_TIMEOUT
        while not found:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"coffer-storage did not start:\n{self.stderr()}")
            time.sleep(0.02)
        return found[0]

    def client(self, **cfg):
        # s3v4 for presigned URLs too: botocore presigns with SigV2 by default in us-east-1,
        # which Coffer refuses (issue 11 C8).
        client = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(**{"signature_version": "s3v4", "s3": {"addressing_style": "path"},
                             "retries": {"max_attempts": 1}, **cfg}))
        coffer_blobstore.record_names(client)
        return client

    def stderr(self, tail: int = 200) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._stderr.close()


_NODES: list[Node] = []


@pytest.fixture(scope="session", autouse=True)
def blob_backend_scan():
    """Under COFFER_TEST_BLOB_STORE: at session end, no bucket or object name in the backend."""
    yield
    hits = coffer_blobstore.scan_names()
    assert not hits, "names on the blob backend:\n" + "\n".join(hits[:50])


@pytest.fixture(scope="session")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("coffer-s3")
    n = Node(root / "data", root / "logs")
    _NODES.append(n)
    yield n
    n.stop()


@pytest.fixture
def start_node(tmp_path):
    """Start extra nodes (for restart and crash tests); all are stopped at the end of the test."""
    started: list[Node] = []

    def start(data_dir: Path, extra_args: list[str] | None = None) -> Node:
        n = Node(data_dir, tmp_path / "logs", extra_args)
        started.append(n)
        _NODES.append(n)
        return n
    yield start
    for n in started:
        n.stop()


@pytest.fixture(scope="session")
def s3(node):
    return node.client()


@pytest.fixture
def bucket(s3):
    name = "t-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name)
    return name


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for n in _NODES:
            rep.sections.append((f"coffer-storage stderr ({n.stderr_path.name})", n.stderr()))
