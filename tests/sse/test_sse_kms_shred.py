"""Crypto-shredding end to end (issue 13): a destroyed KMS key makes its SSE-KMS objects
permanently unreadable, with the AWS error and never bytes, against the real processes.

The KMS's deletion window is 7-30 days and its injectable clock exists only in in-process Rust
tests, so no production clock override is used: deletion is scheduled through the real admin
CLI (`key delete ID --window-days 7`), the KMS is stopped cleanly (SIGTERM), the key's
`kms_keys.deletion_ms` (migrations/kms/0003_kms_keys.sql) is moved into the past directly in
`kms.db`, and the KMS is restarted on the same data dir and the same port, so the running storage
node reaches it unchanged. The first use of the due key (or the minute worker) destroys it.

Also the disabled-key round trip with a raw response (no object bytes while disabled, byte-exact
after enable). docs/s3-encryption.md "Key states" and rows K4/K5.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from .harness import (
    Kms,
    Node,
    Proc,
    _bin,
    create_bucket,
    error_code_of,
    expect_error,
    get_bytes,
    headers_of,
    rand,
    signed_request,
)
from .test_sse_kms import BUCKET_KEY_HDR, KEY_ID_HDR, _kms_has_named_keys

SSE_HDR = "x-amz-server-side-encryption"


class Shred:
    """A KMS (storage identity scoped to every key) and a storage node on it."""

    def __init__(self, root: Path):
        if not _kms_has_named_keys():
            pytest.skip("coffer-kms has no named keys")
        self.root = root
        self.kms = Kms(root / "kms", client_args=("--keys", "**"))
        self.node = Node(root / "node", self.kms, allow_sse_kms_over_http=True)
        self.s3 = self.node.client()
        self.restarts = 0

    def admin_raw(self, *args: str) -> subprocess.CompletedProcess:
        """``coffer-kms admin ...`` that may fail (returned, not raised)."""
        return subprocess.run(
            [_bin("coffer-kms"), "admin", "--url", self.kms.url, "--credential",
             str(self.kms.admin_credential), *args],
            capture_output=True, timeout=120, stdin=subprocess.DEVNULL,
        )

    def restart_kms(self, edit=None) -> None:
        """Stop the KMS cleanly, run ``edit(db_path)`` on its SQLite file, and start it again on
        the same data dir and the same port (the storage node keeps its --kms-url)."""
        port = self.kms.url.rsplit(":", 1)[1]
        rc = self.kms.proc.stop()
        assert rc == 0, f"coffer-kms did not stop cleanly on SIGTERM (exit {rc})"
        if edit is not None:
            edit(self.kms.data_dir / "kms.db")
        self.restarts += 1
        self.kms.proc = Proc(
            f"coffer-kms-restart{self.restarts}",
            [_bin("coffer-kms"), "serve", "--data-dir", str(self.kms.data_dir), "--listen",
             f"127.0.0.1:{port}", "--passphrase-file", str(self.kms.passphrase_file), "--no-mlock",
             "--insecure-http"],
            self.kms.root / "logs",
        )
        assert self.kms.proc.url == self.kms.url, (self.kms.proc.url, self.kms.url)

    def restart_node(self) -> None:
        """Stop the storage node and start another on the same data dir (cold key cache)."""
        data_dir = self.node.data_dir
        self.node.stop()
        self.restarts += 1
        self.node = Node(self.root / f"node-restart{self.restarts}", self.kms, data_dir=data_dir,
                         allow_sse_kms_over_http=True, name=f"coffer-storage-restart{self.restarts}")
        self.s3 = self.node.client()

    def stop(self):
        self.node.stop()
        self.kms.stop()


@pytest.fixture(scope="module")
def sh(tmp_path_factory):
    s = Shred(tmp_path_factory.mktemp("shred"))
    yield s
    s.stop()


def backdate_deletion(key_id: str):
    """Edit for restart_kms: the key's deletion date one minute in the past."""

    def edit(db: Path):
        con = sqlite3.connect(db)
        try:
            with con:
                row = con.execute("SELECT state, deletion_ms FROM kms_keys WHERE key_id = ?",
                                  (key_id,)).fetchone()
                assert row is not None and row[0] == "PendingDeletion" and row[1], row
                past = int(time.time() * 1000) - 60_000
                cur = con.execute("UPDATE kms_keys SET deletion_ms = ? WHERE key_id = ?", (past, key_id))
                assert cur.rowcount == 1
        finally:
            con.close()

    return edit


def assert_no_object_bytes(resp, data: bytes, code: str, what: str):
    """A raw response: HTTP 400 with the AWS error ``code`` and an XML error body that holds no
    byte range of the object."""
    assert resp.status_code == 400, f"{what}: HTTP {resp.status_code} {resp.content[:300]!r}"
    assert error_code_of(resp) == code, f"{what}: {resp.content[:500]!r}"
    body = resp.content
    assert body.lstrip().startswith(b"<?xml") or body.lstrip().startswith(b"<Error"), what
    assert len(body) < 2048, f"{what}: {len(body)} body bytes"
    assert data[:32] not in body and data[-32:] not in body, f"{what}: object bytes in the body"
    assert resp.headers.get("content-range") is None, what


def raw_get(node: Node, b: str, k: str, headers: dict | None = None):
    return signed_request(node, "GET", f"/{b}/{k}", headers=headers)


def test_destroyed_key_makes_objects_permanently_unreadable(sh):
    key = json.loads(sh.kms.admin("key", "create", "--alias", "alias/shred-me").stdout)
    kid, arn = key["key_id"], key["arn"]
    b = create_bucket(sh.s3)
    plain, bk = rand(150_000), rand(90_000)  # per-object data key / bucket key
    sh.s3.put_object(Bucket=b, Key="per-object", Body=plain, ServerSideEncryption="aws:kms",
                     SSEKMSKeyId="alias/shred-me")
    sh.s3.put_object(Bucket=b, Key="bucket-key", Body=bk, ServerSideEncryption="aws:kms",
                     SSEKMSKeyId=kid, BucketKeyEnabled=True)
    assert get_bytes(sh.s3, b, "per-object")[0] == plain
    assert get_bytes(sh.s3, b, "bucket-key")[0] == bk  # warms the node's bucket-key cache

    # Schedule deletion through the real admin CLI; pending deletion answers the AWS code.
    out = json.loads(sh.kms.admin("key", "delete", kid, "--window-days", "7").stdout)
    assert out["key"]["state"] == "PendingDeletion" and out["key"].get("deletion_date"), out
    expect_error(400, "KMS.KMSInvalidStateException", sh.s3.get_object, Bucket=b, Key="per-object")

    # Move the deletion date into the past in kms.db, restart the KMS on the same port.
    sh.restart_kms(backdate_deletion(kid))

    # Per-object data key: HEAD makes no KMS call (as AWS) and still describes the object; GET
    # and HEAD-then-GET (also a range) are 400 KMS.NotFoundException with no object bytes.
    h = headers_of(sh.s3.head_object(Bucket=b, Key="per-object"))
    assert h[SSE_HDR] == "aws:kms" and h[KEY_ID_HDR] == arn, h
    for what, hdrs in (("GET", None), ("GET after HEAD", None), ("ranged GET", {"Range": "bytes=0-99"})):
        assert_no_object_bytes(raw_get(sh.node, b, "per-object", hdrs), plain,
                               "KMS.NotFoundException", f"{what} per-object data key")
    expect_error(400, "KMS.NotFoundException", sh.s3.get_object, Bucket=b, Key="per-object")

    # The key is destroyed (by the first use after its date), never pending again.
    desc = json.loads(sh.kms.admin("key", "describe", kid).stdout)
    assert desc["state"] == "Destroyed", desc

    # Bucket key: the node still holds the plaintext bucket-level key in its cache (TTL 300 s),
    # so it keeps serving that bucket until the TTL ends or the node restarts (docs: "Key states").
    got, r = get_bytes(sh.s3, b, "bucket-key")
    assert got == bk, "a cached bucket key serves until key_cache_ttl"
    assert headers_of(r).get(BUCKET_KEY_HDR) == "true"
    # A cold cache (node restarted on the same data dir): unreadable for good.
    sh.restart_node()
    h = headers_of(sh.s3.head_object(Bucket=b, Key="bucket-key"))
    assert h[SSE_HDR] == "aws:kms" and h[KEY_ID_HDR] == arn and h.get(BUCKET_KEY_HDR) == "true", h
    for what in ("GET", "GET after HEAD"):
        assert_no_object_bytes(raw_get(sh.node, b, "bucket-key"), bk, "KMS.NotFoundException",
                               f"{what} bucket key, cold cache")
        assert_no_object_bytes(raw_get(sh.node, b, "per-object"), plain, "KMS.NotFoundException",
                               f"{what} per-object, restarted node")

    # Writes naming the key (id, ARN, alias; with and without a bucket key) are refused.
    for ref in (kid, arn, "alias/shred-me"):
        for bucket_key in (False, True):
            expect_error(400, "KMS.NotFoundException", sh.s3.put_object, Bucket=b, Key="new",
                         Body=b"x", ServerSideEncryption="aws:kms", SSEKMSKeyId=ref,
                         BucketKeyEnabled=bucket_key)
    expect_error(404, None, sh.s3.head_object, Bucket=b, Key="new")

    # Still unreadable after another KMS restart (material erased, not just a state).
    sh.restart_kms()
    assert_no_object_bytes(raw_get(sh.node, b, "per-object"), plain, "KMS.NotFoundException",
                           "GET after a second KMS restart")

    # Names are tombstoned: the alias and the key id cannot be taken again (409 conflict).
    other = json.loads(sh.kms.admin("key", "create").stdout)
    for args in (("alias", "create", "alias/shred-me", other["key_id"]),
                 ("key", "create", "--alias", "alias/shred-me"),
                 ("alias", "create", "alias/shred-me-2", kid)):
        res = sh.admin_raw(*args)
        text = (res.stdout + res.stderr).decode(errors="replace")
        assert res.returncode != 0, f"{args}: {text}"
        if args[-1] != kid:
            assert "conflict" in text, f"{args}: {text}"
        else:
            assert "kms_key_not_found" in text or "conflict" in text, f"{args}: {text}"
    aliases = sh.kms.admin("alias", "list").stdout.decode()
    assert "alias/shred-me" not in aliases, aliases

    # The audit log has the destroy record for this key.
    res = sh.kms.admin("audit", "query", "--op", "kmskey.destroy")
    records = [json.loads(line) for line in res.stdout.decode().splitlines() if line.strip().startswith("{")]
    if not records:
        records = json.loads(res.stdout)
        records = records if isinstance(records, list) else records.get("records", [])
    mine = [r for r in records if r.get("key_id") == kid]
    assert len(mine) == 1, res.stdout.decode()
    assert mine[0]["operation"] == "kmskey.destroy" and mine[0]["result"] == "ok", mine[0]


def test_disabled_key_round_trip_without_and_with_bucket_key(sh):
    key = json.loads(sh.kms.admin("key", "create", "--alias", "alias/pause-me").stdout)
    b = create_bucket(sh.s3)
    plain, bk = rand(120_000), rand(80_000)
    sh.s3.put_object(Bucket=b, Key="per-object", Body=plain, ServerSideEncryption="aws:kms",
                     SSEKMSKeyId="alias/pause-me")
    sh.s3.put_object(Bucket=b, Key="bucket-key", Body=bk, ServerSideEncryption="aws:kms",
                     SSEKMSKeyId="alias/pause-me", BucketKeyEnabled=True)
    sh.kms.admin("key", "disable", key["key_id"])
    assert_no_object_bytes(raw_get(sh.node, b, "per-object"), plain, "KMS.DisabledException",
                           "GET, disabled key")
    assert_no_object_bytes(raw_get(sh.node, b, "per-object", {"Range": "bytes=100-199"}), plain,
                           "KMS.DisabledException", "ranged GET, disabled key")
    expect_error(400, "KMS.DisabledException", sh.s3.put_object, Bucket=b, Key="x", Body=b"x",
                 ServerSideEncryption="aws:kms", SSEKMSKeyId="alias/pause-me")
    # Bucket key: cached by the PUT, it keeps serving until the TTL (docs "Key states"); a node
    # with a cold cache answers the AWS error.
    assert get_bytes(sh.s3, b, "bucket-key")[0] == bk
    sh.restart_node()
    assert_no_object_bytes(raw_get(sh.node, b, "bucket-key"), bk, "KMS.DisabledException",
                           "GET bucket key, disabled key, cold cache")
    sh.kms.admin("key", "enable", key["key_id"])
    assert get_bytes(sh.s3, b, "per-object")[0] == plain
    assert get_bytes(sh.s3, b, "bucket-key")[0] == bk
    assert get_bytes(sh.s3, b, "per-object", Range="bytes=100-199")[0] == plain[100:200]
