"""The storage nodes' blob store for the pytest suites (issue 14).

``COFFER_TEST_BLOB_STORE=coffer`` keeps every suite node's ciphertext in one session-wide second,
plaintext ``coffer-storage serve --default-encryption none``; ``=moto`` in one session-wide moto
S3 server (PyPI). Each node data dir gets its own prefix ``n-<hex>/`` in the backend bucket
``coffer-blobs`` (keyed by data dir, so a node restarted on the same data dir finds its blobs).
Unset (or ``local``), nodes keep ``blobs/`` in their data dir as always.

- ``blob_args(data_dir)``: the ``serve`` flags that put ``data_dir``'s node on the backend;
- ``blob_names(data_dir)``: the names of that node's blobs (local ``blobs/`` or the backend);
- ``blob_bytes(data_dir)``: name -> bytes of that node's blobs;
- ``backend_objects()``: every backend object (key -> bytes), for the at-rest scans;
- ``record_names(client)``: remember the bucket and object names a boto3 client sends, which
  ``scan_names()`` (run at session end by the suites' conftests) looks for in every backend
  object's key and, for bucket names, in its bytes: 0 hits;
- ``LOCAL_BLOBS_ONLY``: a skip mark for tests that read or tamper with local blob files.
"""

from __future__ import annotations

import atexit
import os
import secrets
import socket
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN_DIR = Path(os.environ.get("COFFER_BIN_DIR", REPO / "target" / "debug"))
KIND = os.environ.get("COFFER_TEST_BLOB_STORE", "local") or "local"
if KIND not in ("local", "coffer", "moto"):
    raise RuntimeError(f"COFFER_TEST_BLOB_STORE={KIND}: expected coffer, moto or unset")
ENABLED = KIND != "local"
LOCAL_BLOBS_ONLY = pytest.mark.skipif(
    ENABLED, reason=f"reads or tampers with the node's local blobs/ files (COFFER_TEST_BLOB_STORE={KIND})")
BUCKET = "coffer-blobs"

_backend: dict = {}
_prefixes: dict[str, str] = {}
_names: set[str] = set()
_buckets: set[str] = set()


def _start() -> dict:
    if _backend:
        return _backend
    import boto3
    from botocore.config import Config

    top = Path(os.environ.get("TMPDIR", "/tmp")) / f"coffer-blobstore-{uuid.uuid4().hex[:8]}"
    top.mkdir(parents=True)
    if KIND == "coffer":
        ak, sk = "blob-backend", "blob-backend-" + secrets.token_hex(12)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = open(top / "backend.stderr.log", "wb")
        proc = subprocess.Popen(
            [str(BIN_DIR / "coffer-storage"), "serve", "--data-dir", str(top / "data"),
             "--listen", f"127.0.0.1:{port}", "--default-encryption", "none"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
            env=dict(os.environ, COFFER_S3_ACCESS_KEY=ak, COFFER_S3_SECRET_KEY=sk, NO_COLOR="1"))
        ready = threading.Event()
        found: list[str] = []

        def read() -> None:
            for raw in proc.stdout:  # type: ignore[union-attr]
                line = raw.decode(errors="replace").strip()
                if line.startswith("listening on ") and not found:
                    found.append(line.removeprefix("listening on ").rstrip("/"))
                    ready.set()
            ready.set()
        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(60) or not found:
            proc.kill()
            raise RuntimeError(f"blob backend did not start: {(top / 'backend.stderr.log').read_text()}")
        _backend.update(proc=proc, url=found[0], data=top / "data")
    else:
        from moto.server import ThreadedMotoServer

        ak, sk = "moto-access", "moto-secret"
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        host, port = moto.get_host_and_port()
        _backend.update(moto=moto, url=f"http://{host}:{port}")
    keys = top / "keys"
    keys.mkdir()
    for name, text in (("ak", ak), ("sk", sk)):
        fd = os.open(keys / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    client = boto3.client(
        "s3", endpoint_url=_backend["url"], region_name="us-east-1", aws_access_key_id=ak,
        aws_secret_access_key=sk,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      retries={"total_max_attempts": 1}))
    client.create_bucket(Bucket=BUCKET)
    _backend.update(client=client, keys=keys)
    atexit.register(_stop)
    return _backend


def _stop() -> None:
    if "proc" in _backend:
        _backend["proc"].terminate()
        try:
            _backend["proc"].wait(15)
        except subprocess.TimeoutExpired:
            _backend["proc"].kill()
    if "moto" in _backend:
        _backend["moto"].stop()
    _backend.clear()


def _prefix(data_dir: Path | str) -> str:
    key = str(Path(data_dir).resolve())
    if key not in _prefixes:
        _prefixes[key] = "n-" + uuid.uuid4().hex[:12]
    return _prefixes[key]


def blob_args(data_dir: Path | str) -> list[str]:
    if not ENABLED:
        return []
    b = _start()
    return ["--blob-store", f"s3://{BUCKET}/{_prefix(data_dir)}", "--blob-store-endpoint", b["url"],
            "--blob-store-allow-http", "--blob-store-access-key-file", str(b["keys"] / "ak"),
            "--blob-store-secret-key-file", str(b["keys"] / "sk"),
            # The prefix is this data dir's alone (no other node writes there), so a restarted
            # node's start-up sweep may remove unreferenced blobs at once, as it does locally.
            "--orphan-grace-secs", "0"]


def _keys(prefix: str = "") -> list[str]:
    c = _start()["client"]
    out = []
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def blob_names(data_dir: Path | str) -> set[str]:
    """The names of ``data_dir``'s node's blobs (the ``file`` column of its ``blobs`` rows)."""
    if not ENABLED:
        return {p.name for p in (Path(data_dir) / "blobs").iterdir()}
    p = _prefix(data_dir) + "/"
    return {k[len(p):] for k in _keys(p)}


def blob_bytes(data_dir: Path | str) -> dict[str, bytes]:
    """Name -> stored bytes of ``data_dir``'s node's blobs (local ``blobs/`` or the backend)."""
    if not ENABLED:
        return {p.name: p.read_bytes() for p in (Path(data_dir) / "blobs").iterdir() if p.is_file()}
    c, p = _start()["client"], _prefix(data_dir) + "/"
    return {k[len(p):]: c.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in _keys(p)}


def backend_objects() -> dict[str, bytes]:
    c = _start()["client"]
    return {k: c.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in _keys()}


def backend_dirs() -> list[Path]:
    """The plaintext coffer backend's data dir (its meta.db and blob files), for file scans."""
    return [_backend["data"]] if ENABLED and "data" in _start() else []


def record_names(client) -> None:
    """Remember the names ``client`` sends (only under the switch)."""
    if not ENABLED:
        return

    def hook(params, **_):
        b, k = params.get("Bucket"), params.get("Key")
        if isinstance(b, str) and len(b) >= 8:
            _buckets.add(b)
        if isinstance(k, str) and len(k) >= 6 and not all(c in "0123456789abcdef" for c in k):
            _names.add(k)  # (a short or hex name could occur by chance in an opaque blob name)
    client.meta.events.register("provide-client-params.s3.*", hook)


def scan_names() -> list[str]:
    """Hits of the recorded bucket names in backend keys and bytes, and of the object names in
    backend keys (object bytes may hold a plaintext bucket's own data)."""
    if not ENABLED or not _backend:
        return []
    hits = []
    objects = backend_objects()
    for key, data in objects.items():
        prefix, _, name = key.partition("/")
        if prefix not in _prefixes.values():
            hits.append(f"backend key {key} is under no node's prefix")
        for n in _names | _buckets:
            if n in name:
                hits.append(f"name {n!r} in backend key {key}")
        for b in _buckets:
            if b.encode() in data:
                hits.append(f"bucket name {b!r} in backend object {key}")
    return hits
