"""Issue 14 (encrypting gateway): a Coffer node keeping its blobs in an S3-compatible store
(``--blob-store s3://BUCKET/PREFIX``), against two real backends: a second, plaintext
``coffer-storage serve --default-encryption none`` (no KMS) and moto's S3 server. The node serves
PUT/GET (single, multipart, ranged; SSE-S3 and SSE-C), copy, list and delete; afterwards every
backend object is scanned for the plaintext marker and the object names (0 hits). A backend killed
mid-PUT gives 503 + Retry-After and nothing visible; the start-up sweep removes backend blobs no
row references."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from .harness import ACCESS_KEY, REGION, SECRET_KEY, Proc, _bin, rand, ssec, wait_until

MiB = 1024 * 1024
MARKER = b"PLAINTEXT-MARKER-" + uuid.uuid4().hex.encode()


def _secret(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


class Backend:
    """An S3 endpoint that stores what the node sends it, with a client for inspecting it."""

    def __init__(self, kind: str, root: Path, port: int = 0):
        root.mkdir(parents=True, exist_ok=True)
        self.kind, self.root = kind, root
        self.proc = self.moto = None
        if kind == "coffer":
            self.ak, self.sk = ACCESS_KEY, SECRET_KEY
            self.proc = Proc(
                "backend", [_bin("coffer-storage"), "serve", "--data-dir", str(root / "data"),
                            "--listen", f"127.0.0.1:{port}", "--default-encryption", "none"],
                root / "logs", env={"COFFER_S3_ACCESS_KEY": self.ak, "COFFER_S3_SECRET_KEY": self.sk})
            self.url = self.proc.url
        else:
            from moto.server import ThreadedMotoServer

            self.ak, self.sk = "moto-access", "moto-secret"
            self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            self.moto.start()
            host, p = self.moto.get_host_and_port()
            self.url = f"http://{host}:{p}"
        self.client = boto3.client(
            "s3", endpoint_url=self.url, region_name=REGION, aws_access_key_id=self.ak,
            aws_secret_access_key=self.sk,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          retries={"total_max_attempts": 1}))

    def node_args(self, bucket: str, prefix: str) -> tuple[str, ...]:
        d = self.root / f"keys-{uuid.uuid4().hex[:6]}"
        d.mkdir()
        return ("--blob-store", f"s3://{bucket}/{prefix}", "--blob-store-endpoint", self.url,
                "--blob-store-allow-http", "--blob-store-timeout-ms", "3000",
                "--blob-store-access-key-file", str(_secret(d / "ak", self.ak)),
                "--blob-store-secret-key-file", str(_secret(d / "sk", self.sk)))

    def objects(self, bucket: str) -> dict[str, bytes]:
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for o in page.get("Contents", []):
                out[o["Key"]] = self.client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        return out

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
        if self.moto:
            self.moto.stop()


@pytest.fixture(scope="module", params=["coffer", "moto"])
def backend(request, tmp_path_factory):
    b = Backend(request.param, tmp_path_factory.mktemp(f"backend-{request.param}"))
    yield b
    b.stop()


def _gateway(backend: Backend, start_node, **kw):
    bucket = "blobs-" + uuid.uuid4().hex[:8]
    backend.client.create_bucket(Bucket=bucket)
    prefix = "node-" + uuid.uuid4().hex[:4]
    node = start_node(extra=backend.node_args(bucket, prefix), **kw)
    return node, bucket, prefix


def test_gateway_serves_everything_and_the_backend_sees_only_ciphertext(backend, start_node):
    node, bbucket, prefix = _gateway(backend, start_node)
    s3 = node.client()
    bucket = "secret-bucket-" + uuid.uuid4().hex[:6]
    s3.create_bucket(Bucket=bucket)
    names = [f"secret-name-{i}-{uuid.uuid4().hex[:6]}" for i in range(6)]
    small = MARKER * 1000
    big = (MARKER + rand(4096)) * (20 * MiB // (len(MARKER) + 4096))  # > 8 MiB: backend multipart
    key_c = os.urandom(32)

    s3.put_object(Bucket=bucket, Key=names[0], Body=small)
    s3.put_object(Bucket=bucket, Key=names[1], Body=big)
    s3.put_object(Bucket=bucket, Key=names[2], Body=small, **ssec(key_c))
    up = s3.create_multipart_upload(Bucket=bucket, Key=names[3])["UploadId"]
    parts = [MARKER * (5 * MiB // len(MARKER) + 1), MARKER * 10]
    etags = [s3.upload_part(Bucket=bucket, Key=names[3], UploadId=up, PartNumber=i + 1,
                            Body=p)["ETag"] for i, p in enumerate(parts)]
    s3.complete_multipart_upload(
        Bucket=bucket, Key=names[3], UploadId=up,
        MultipartUpload={"Parts": [{"ETag": e, "PartNumber": i + 1} for i, e in enumerate(etags)]})
    s3.copy_object(Bucket=bucket, Key=names[4], CopySource={"Bucket": bucket, "Key": names[1]})
    s3.put_object(Bucket=bucket, Key=names[5], Body=b"")

    assert s3.get_object(Bucket=bucket, Key=names[0])["Body"].read() == small
    assert s3.get_object(Bucket=bucket, Key=names[1])["Body"].read() == big
    assert s3.get_object(Bucket=bucket, Key=names[4])["Body"].read() == big
    assert s3.get_object(Bucket=bucket, Key=names[5])["Body"].read() == b""
    r = s3.get_object(Bucket=bucket, Key=names[2], **ssec(key_c))
    assert r["Body"].read() == small and r["SSECustomerAlgorithm"] == "AES256"
    whole = b"".join(parts)
    assert s3.get_object(Bucket=bucket, Key=names[3])["Body"].read() == whole
    for lo, hi in [(0, 0), (65535, 65537), (5 * MiB - 3, 5 * MiB + 100), (len(whole) - 7, len(whole) - 1)]:
        got = s3.get_object(Bucket=bucket, Key=names[3], Range=f"bytes={lo}-{hi}")
        assert got["Body"].read() == whole[lo:hi + 1], (lo, hi)
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    lo = 9 * MiB + 5
    got = s3.get_object(Bucket=bucket, Key=names[1], Range=f"bytes={lo}-{lo + 200_000}")
    assert got["Body"].read() == big[lo:lo + 200_001]
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert listed == sorted(names)

    stored = backend.objects(bbucket)
    # Blobs: 1 + 1 + 1 + 2 parts + copy + empty.
    assert len(stored) == 7, sorted(stored)
    for k, data in stored.items():
        assert k.startswith(prefix + "/"), k
        assert MARKER not in data, k
        assert not any(n.encode() in data or n in k for n in names + [bucket]), k

    s3.delete_object(Bucket=bucket, Key=names[1])
    assert len(backend.objects(bbucket)) == 6
    assert s3.get_object(Bucket=bucket, Key=names[4])["Body"].read() == big


def _put_error(s3, **kw) -> dict:
    with pytest.raises(ClientError) as ei:
        s3.put_object(**kw)
    return ei.value.response


def test_backend_killed_mid_put_gives_503_and_nothing_visible(start_node, tmp_path_factory):
    be = Backend("coffer", tmp_path_factory.mktemp("backend-kill"))
    node, bbucket, _ = _gateway(be, start_node)
    s3 = node.client(read_timeout=120)
    bucket = "b-" + uuid.uuid4().hex[:8]
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="kept", Body=b"kept")
    port = be.url.rsplit(":", 1)[1]
    out: dict = {}

    def put() -> None:
        try:
            s3.put_object(Bucket=bucket, Key="torn", Body=rand(64 * MiB))
            out["ok"] = True
        except ClientError as e:
            out["err"] = e.response

    t = threading.Thread(target=put)
    t.start()
    # The node uploads the sealed blob as a backend multipart upload: kill the backend during it.
    seen = wait_until(lambda: be.client.list_multipart_uploads(Bucket=bbucket).get("Uploads"), 120,
                      interval=0.02)
    assert seen, "the node never started a backend multipart upload"
    be.proc.popen.kill()
    t.join(120)
    assert "err" in out, out
    err = out["err"]
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 503, err
    assert err["Error"]["Code"] == "ServiceUnavailable"
    assert err["ResponseMetadata"]["HTTPHeaders"].get("retry-after") == "1"
    # Down: reads and writes answer 503 + Retry-After, never 200.
    e = _put_error(s3, Bucket=bucket, Key="while-down", Body=b"x")
    assert e["ResponseMetadata"]["HTTPStatusCode"] == 503
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=bucket, Key="kept")
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    # Back on the same address: the torn and refused writes are not visible, the old one is.
    be.proc.stop()
    be2 = Backend("coffer", be.root, port=int(port))
    try:
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert keys == ["kept"]
        assert s3.get_object(Bucket=bucket, Key="kept")["Body"].read() == b"kept"
    finally:
        be2.stop()


def test_start_up_sweep_removes_backend_blobs_without_rows(backend, start_node):
    node, bbucket, prefix = _gateway(backend, start_node)
    s3 = node.client()
    bucket = "b-" + uuid.uuid4().hex[:8]
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="live", Body=MARKER)
    live = set(backend.objects(bbucket))
    stray = f"{prefix}/{uuid.uuid4().hex}"
    backend.client.put_object(Bucket=bbucket, Key=stray, Body=b"orphan")
    other = f"other-prefix/{uuid.uuid4().hex}"
    backend.client.put_object(Bucket=bbucket, Key=other, Body=b"not ours")
    # Backend multipart uploads left incomplete (a node killed mid-upload), ours and another's.
    for k in (f"{prefix}/{uuid.uuid4().hex}", other):
        backend.client.create_multipart_upload(Bucket=bbucket, Key=k)

    def uploads() -> set[str]:
        return {u["Key"] for u in backend.client.list_multipart_uploads(Bucket=bbucket).get("Uploads", [])}

    pending = uploads()
    assert len(pending) == 2
    node.stop()
    # Issue 14: a blob younger than the grace period (1 h by default) may be another node's
    # write in flight (uploaded, row not yet committed): the sweep keeps it, and the uploads.
    again = _restart(node, start_node)
    assert set(backend.objects(bbucket)) == live | {other, stray}
    assert uploads() == pending
    again.stop()
    # With no grace, it is an orphan and goes, and our upload is aborted; other prefixes are
    # never touched.
    again = _restart(node, start_node, "--orphan-grace-secs", "0")
    assert set(backend.objects(bbucket)) == live | {other}
    assert uploads() == {other}
    assert again.client().get_object(Bucket=bucket, Key="live")["Body"].read() == MARKER


def _restart(node, start_node, *more):
    extra = tuple(node.args[node.args.index("--blob-store"):]) + more
    return start_node(extra=extra, data_dir=node.data_dir)
