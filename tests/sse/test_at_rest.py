"""At rest: no plaintext marker, no customer key (or its MD5), no bucket key and no passphrase in any
file of the storage or KMS data dirs; a flipped byte in a blob makes GET fail without bytes (E25)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path

import pytest
import requests

import coffer_blobstore
import coffer_pg
from .faultproxy import FaultProxy
from .harness import (
    KEY_A,
    KEY_B,
    MiB,
    SEG,
    create_bucket,
    rand,
    ssec,
)


def forms(secret: bytes) -> dict[str, bytes]:
    """The encodings of a secret worth looking for."""
    b64s = base64.b64encode(secret)
    out = {
        "raw": secret,
        "hex": secret.hex().encode(),
        "HEX": secret.hex().upper().encode(),
        "base64": b64s,
        "base64-nopad": b64s.rstrip(b"="),
        "base64url": base64.urlsafe_b64encode(secret).rstrip(b"="),
    }
    return {k: v for k, v in out.items() if len(v) >= 8}


def scan(dirs: list[Path], needles: dict[str, bytes]) -> list[str]:
    hits = []
    files = 0
    for d in dirs:
        for root, _, names in os.walk(d):
            for name in names:
                p = Path(root) / name
                try:
                    data = p.read_bytes()
                except OSError:
                    continue
                files += 1
                for label, needle in needles.items():
                    if needle in data:
                        hits.append(f"{label} in {p}")
    assert files > 0, f"nothing to scan in {dirs}"
    return hits


def all_files(d: Path) -> list[Path]:
    return [Path(r) / n for r, _, ns in os.walk(d) for n in ns]


def test_nothing_secret_at_rest(kms, start_node):
    # KMS traffic through a recording proxy, to learn the plaintext bucket keys the node receives
    with FaultProxy(kms.url, record=True) as proxy:
        n = start_node(kms_url=proxy.url, name="coffer-storage-at-rest")
        c = n.client()
        marker = b"COFFER-AT-REST-MARKER-" + rand(12).hex().encode()
        b1, b2 = create_bucket(c), create_bucket(c)
        body = (marker + b"|") * 5000  # ~210 KiB, marker in every segment
        c.put_object(Bucket=b1, Key="sse-s3", Body=body, ServerSideEncryption="AES256")
        c.put_object(Bucket=b2, Key="sse-s3-default", Body=body)  # bucket default (node: SSE-S3)
        c.put_object(Bucket=b1, Key="ssec", Body=body, **ssec(KEY_A))
        up = c.create_multipart_upload(Bucket=b1, Key="mp", **ssec(KEY_B))["UploadId"]
        p1 = c.upload_part(Bucket=b1, Key="mp", UploadId=up, PartNumber=1, Body=body * 25, **ssec(KEY_B))
        p2 = c.upload_part(Bucket=b1, Key="mp", UploadId=up, PartNumber=2, Body=body, **ssec(KEY_B))
        c.complete_multipart_upload(Bucket=b1, Key="mp", UploadId=up, **ssec(KEY_B), MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": p1["ETag"]}, {"PartNumber": 2, "ETag": p2["ETag"]}]})
        up = c.create_multipart_upload(Bucket=b2, Key="mp-s3", ServerSideEncryption="AES256")["UploadId"]
        p1 = c.upload_part(Bucket=b2, Key="mp-s3", UploadId=up, PartNumber=1, Body=body * 25)
        c.complete_multipart_upload(Bucket=b2, Key="mp-s3", UploadId=up,
                                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p1["ETag"]}]})
        # an in-progress upload too
        up = c.create_multipart_upload(Bucket=b1, Key="pending", **ssec(KEY_A))["UploadId"]
        c.upload_part(Bucket=b1, Key="pending", UploadId=up, PartNumber=1, Body=body, **ssec(KEY_A))
        # SSE-C rotation (re-seal) and a copy
        c.copy_object(Bucket=b1, Key="ssec", CopySource={"Bucket": b1, "Key": "ssec"},
                      CopySourceSSECustomerAlgorithm="AES256", CopySourceSSECustomerKey=KEY_A, **ssec(KEY_B))
        c.copy_object(Bucket=b2, Key="copy", CopySource={"Bucket": b1, "Key": "sse-s3"})
        # everything reads back (so the scan is of a working node)
        assert c.get_object(Bucket=b1, Key="ssec", **ssec(KEY_B))["Body"].read() == body
        assert c.get_object(Bucket=b1, Key="mp", **ssec(KEY_B))["Body"].read() == body * 26
        assert c.get_object(Bucket=b2, Key="copy")["Body"].read() == body

        traffic = proxy.recorded_bytes()
        bucket_keys = [base64.b64decode(m) for m in
                       re.findall(rb'"plaintext_key"\s*:\s*"([A-Za-z0-9+/=]+)"', traffic)]
        assert bucket_keys, "no plaintext_key seen on the KMS link (did the node use the proxy?)"
        assert all(len(k) == 32 for k in bucket_keys)

        needles: dict[str, bytes] = {}
        needles["marker"] = marker
        needles["marker-hex"] = marker.hex().encode()
        needles["marker-base64"] = base64.b64encode(marker * 3)[8:40]
        for name, key in (("KEY_A", KEY_A), ("KEY_B", KEY_B)):
            for f, v in forms(key).items():
                needles[f"{name}-{f}"] = v
            for f, v in forms(hashlib.md5(key).digest()).items():
                needles[f"{name}-md5-{f}"] = v
            for f, v in forms(hashlib.sha256(key).digest()).items():
                needles[f"{name}-sha256-{f}"] = v
        for i, k in enumerate(set(bucket_keys)):
            for f, v in forms(k).items():
                needles[f"bucket-key{i}-{f}"] = v
        for f, v in forms(kms.passphrase.encode()).items():
            needles[f"passphrase-{f}"] = v

        names = [p.name for p in all_files(n.data_dir)]
        # The metadata: meta.db (and its WAL) in the data dir, or the PostgreSQL server's files.
        meta_dirs = [coffer_pg.server_dir()] if coffer_pg.ENABLED else []
        if not coffer_pg.ENABLED:
            assert "meta.db" in names, f"meta.db not in the node's data dir: {names}"
        # COFFER_TEST_BLOB_STORE: the blobs are on the shared backend (every node's, this
        # session); scan its stored objects (bytes and keys, for the secrets and the bucket and
        # object names too) and, for the plaintext coffer backend, its data dir.
        meta_dirs += coffer_blobstore.backend_dirs()
        if coffer_blobstore.ENABLED:
            mine = coffer_blobstore.blob_bytes(n.data_dir)
            assert len(mine) >= 7, f"this node's blobs are not on the backend: {sorted(mine)}"
            names = {"bucket-1": b1.encode(), "bucket-2": b2.encode(),
                     **{f"key-{k}": k.encode() for k in ("sse-s3-default",)}}
            objects = coffer_blobstore.backend_objects()
            hits = [f"{label} in backend object {k}" for k, data in objects.items()
                    for label, v in {**needles, **names}.items() if v in data or v in k.encode()]
            assert not hits, "secrets or names on the blob backend:\n" + "\n".join(hits)
        # while running: meta.db, meta.db-wal, blobs
        hits = scan([n.data_dir, kms.data_dir, *meta_dirs], needles)
        assert not hits, "secrets at rest (node running):\n" + "\n".join(hits)
        n.stop()
        hits = scan([n.data_dir, kms.data_dir, *meta_dirs], needles)
        assert not hits, "secrets at rest (node stopped):\n" + "\n".join(hits)


# ------------------------------------------------------------------ E25: tampered blob


def new_files(before: set[Path], d: Path) -> list[Path]:
    return [p for p in all_files(d) if p not in before and not p.name.startswith("meta.db")
            and "tmp" not in p.relative_to(d).parts]


def fetch(url: str, headers: dict) -> tuple[int | None, bytes, BaseException | None]:
    """GET through requests, collecting whatever bytes arrive before an error."""
    got = bytearray()
    try:
        with requests.get(url, headers=headers, stream=True, timeout=30) as r:
            status = r.status_code
            try:
                for chunk in r.raw.stream(8192, decode_content=False):
                    got.extend(chunk)
            except Exception as e:  # noqa: BLE001  (connection aborted mid-stream)
                return status, bytes(got), e
            if r.headers.get("Content-Length") and int(r.headers["Content-Length"]) != len(got) and status in (200, 206):
                return status, bytes(got), ConnectionError("short body")
            return status, bytes(got), None
    except requests.RequestException as e:
        return None, bytes(got), e


@coffer_blobstore.LOCAL_BLOBS_ONLY
@pytest.mark.parametrize("mode", ["sse-s3", "ssec"])
@pytest.mark.parametrize("where", ["first-segment", "last-segment", "header"])
def test_e25_flipped_byte_never_returns_bytes(s3, bucket, node, mode, where):
    data = rand(4 * SEG + 999)
    extra = ssec(KEY_A) if mode == "ssec" else {"ServerSideEncryption": "AES256"}
    before = set(all_files(node.data_dir))
    s3.put_object(Bucket=bucket, Key="victim", Body=data, **extra)
    candidates = [p for p in new_files(before, node.data_dir) if p.stat().st_size >= len(data)]
    assert len(candidates) == 1, f"expected one new blob file, got {candidates}"
    blob = candidates[0]
    size = blob.stat().st_size
    offset = {"first-segment": 200, "last-segment": size - 20, "header": 4}[where]
    with open(blob, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))

    read = {} if mode == "sse-s3" else {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": KEY_A}
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "victim", **read})
    headers = {}
    if mode == "ssec":
        headers = {"x-amz-server-side-encryption-customer-algorithm": "AES256",
                   "x-amz-server-side-encryption-customer-key": base64.b64encode(KEY_A).decode(),
                   "x-amz-server-side-encryption-customer-key-MD5":
                       base64.b64encode(hashlib.md5(KEY_A).digest()).decode()}
    tampered_seg = {"first-segment": 0, "last-segment": len(data) // SEG, "header": None}[where]
    reads = [None, (SEG - 10, SEG + 10), (len(data) - 100, len(data) - 1), (2 * SEG + 5, 2 * SEG + 50)]
    for rng in reads:
        h = dict(headers)
        first, last = (0, len(data) - 1) if rng is None else rng
        if rng:
            h["Range"] = f"bytes={first}-{last}"
        want = data[first : last + 1]
        covers = tampered_seg is None or first // SEG <= tampered_seg <= last // SEG
        status, got, err = fetch(url, h)
        if err is None and status in (200, 206):
            assert not covers, f"{where} {rng}: HTTP {status} for a read covering the tampered bytes"
            assert got == want, f"{where} {rng}: wrong bytes for an untouched range"
        elif err is None:
            assert status == 500, f"{where} {rng}: HTTP {status}, expected 500 InternalError"
            assert b"<Code>InternalError</Code>" in got, got[:300]
            assert data[:32] not in got
        else:
            # aborted mid-stream: only authenticated bytes (a prefix of the right answer) may have arrived
            assert want.startswith(got), f"{where} {rng}: bytes that are not the plaintext prefix"
            assert len(got) < len(want), f"{where} {rng}: the whole body arrived despite tampering"
    # the node keeps serving other objects
    s3.put_object(Bucket=bucket, Key="ok", Body=b"fine", **extra)
    got = s3.get_object(Bucket=bucket, Key="ok", **read)["Body"].read()
    assert got == b"fine"
