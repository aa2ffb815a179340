"""Integrity and access: x-amz-checksum-* for every algorithm (good and bad, header form and
boto3's aws-chunked trailer form) and Content-MD5 verified before commit (400 BadDigest, nothing
stored); SigV4 failures; NotImplemented for the rest."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib

import boto3
import coffer_blobstore
import pytest
from botocore.config import Config

from .conftest import ACCESS_KEY, REGION
from .util import b64, crc32c, crc64nvme, expect_error

BODY = os.urandom(100_000)
GOOD = {
    "ChecksumCRC32": b64(zlib.crc32(BODY).to_bytes(4, "big")),
    "ChecksumCRC32C": b64(crc32c(BODY)),
    "ChecksumSHA1": b64(hashlib.sha1(BODY).digest()),
    "ChecksumSHA256": b64(hashlib.sha256(BODY).digest()),
    "ChecksumCRC64NVME": b64(crc64nvme(BODY)),
}


@pytest.mark.parametrize("param", sorted(GOOD))
def test_checksum_header_good_and_bad(s3, bucket, param):
    s3.put_object(Bucket=bucket, Key="good", Body=BODY, **{param: GOOD[param]})
    assert s3.get_object(Bucket=bucket, Key="good")["Body"].read() == BODY
    wrong = b64(b"\x01" * len(base64.b64decode(GOOD[param])))
    expect_error(400, "BadDigest", s3.put_object, Bucket=bucket, Key="bad", Body=BODY, **{param: wrong})
    expect_error(404, None, s3.head_object, Bucket=bucket, Key="bad")
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    expect_error(400, "BadDigest", s3.upload_part, Bucket=bucket, Key="mp", UploadId=up, PartNumber=1,
                 Body=BODY, **{param: wrong})
    assert s3.list_parts(Bucket=bucket, Key="mp", UploadId=up).get("Parts", []) == []
    s3.upload_part(Bucket=bucket, Key="mp", UploadId=up, PartNumber=1, Body=BODY, **{param: GOOD[param]})
    assert len(s3.list_parts(Bucket=bucket, Key="mp", UploadId=up)["Parts"]) == 1


@pytest.mark.parametrize("alg", ["CRC32", "SHA1", "SHA256"])
def test_boto3_computed_checksums(node, bucket, alg):
    s3 = node.client(request_checksum_calculation="when_supported")
    s3.put_object(Bucket=bucket, Key=alg, Body=BODY, ChecksumAlgorithm=alg)
    assert s3.get_object(Bucket=bucket, Key=alg)["Body"].read() == BODY


def test_content_md5(s3, bucket):
    good = b64(hashlib.md5(BODY).digest())
    s3.put_object(Bucket=bucket, Key="md5", Body=BODY, ContentMD5=good)
    expect_error(400, "BadDigest", s3.put_object, Bucket=bucket, Key="md5", Body=b"other", ContentMD5=good)
    assert s3.get_object(Bucket=bucket, Key="md5")["Body"].read() == BODY


def test_auth_errors(node, bucket):
    def client(ak, sk):
        return boto3.client("s3", endpoint_url=node.endpoint, region_name=REGION, aws_access_key_id=ak,
                            aws_secret_access_key=sk, config=Config(s3={"addressing_style": "path"},
                                                                     retries={"max_attempts": 1}))
    expect_error(403, "InvalidAccessKeyId", client("nobody", "x").list_buckets)
    expect_error(403, "SignatureDoesNotMatch", client(ACCESS_KEY, "wrong").list_buckets)
    expect_error(403, "SignatureDoesNotMatch", client(ACCESS_KEY, "wrong").put_object,
                 Bucket=bucket, Key="k", Body=b"x")


def test_not_implemented(s3, bucket):
    expect_error(501, "NotImplemented", s3.put_bucket_versioning, Bucket=bucket,
                 VersioningConfiguration={"Status": "Enabled"})
    expect_error(501, "NotImplemented", s3.get_bucket_tagging, Bucket=bucket)
    expect_error(501, "NotImplemented", s3.put_object_acl, Bucket=bucket, Key="k", ACL="private")


def test_declared_body_above_5_gib_is_entity_too_large(node, bucket):
    import socket
    from urllib.parse import urlparse

    u = urlparse(node.endpoint)
    with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
        sock.sendall(f"PUT /{bucket}/huge HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Length: {6 * 1024 ** 3}\r\n"
                     "Connection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert b"<Code>EntityTooLarge</Code>" in body and b"<RequestId>" in body


def _chunked_put(node, bucket, key, data: bytes, trailer_name: str, trailer_value: str,
                 content_encoding: str = "aws-chunked"):
    """PUT with `STREAMING-UNSIGNED-PAYLOAD-TRAILER` (aws-chunked body, checksum in a trailer),
    the way the AWS SDKs send uploads over HTTPS."""
    import requests
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from .conftest import SECRET_KEY

    body = b""
    for i in range(0, len(data), 8192):
        piece = data[i:i + 8192]
        body += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    body += f"0\r\n{trailer_name}:{trailer_value}\r\n\r\n".encode()
    url = f"{node.endpoint}/{bucket}/{key}"
    req = AWSRequest(method="PUT", url=url, data=body, headers={
        "Content-Encoding": content_encoding, "x-amz-decoded-content-length": str(len(data)),
        "x-amz-trailer": trailer_name, "Content-Length": str(len(body))})
    req.context["checksum"] = {"request_algorithm": {"in": "trailer", "algorithm": "crc32"}}
    S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", REGION).add_auth(req)
    return requests.put(url, data=body, headers=dict(req.headers), timeout=10)


@pytest.mark.parametrize("name,fn", [
    ("x-amz-checksum-crc32", lambda d: zlib.crc32(d).to_bytes(4, "big")),
    ("x-amz-checksum-crc32c", crc32c),
    ("x-amz-checksum-sha256", lambda d: hashlib.sha256(d).digest()),
    ("x-amz-checksum-crc64nvme", crc64nvme),
])
def test_aws_chunked_trailer_checksums(node, s3, bucket, name, fn):
    data = os.urandom(50_000)
    r = _chunked_put(node, bucket, "chunked", data, name, b64(fn(data)))
    assert r.status_code == 200, r.text
    assert s3.get_object(Bucket=bucket, Key="chunked")["Body"].read() == data
    r = _chunked_put(node, bucket, "chunked-bad", data, name, b64(fn(b"not the data")))
    assert r.status_code == 400 and b"<Code>BadDigest</Code>" in r.content, r.text
    expect_error(404, None, s3.head_object, Bucket=bucket, Key="chunked-bad")


@pytest.mark.parametrize("extra", [
    {"ContentMD5": b64(hashlib.md5(b"something else").digest())},
    {"ChecksumSHA256": b64(hashlib.sha256(b"something else").digest())},
])
@coffer_blobstore.LOCAL_BLOBS_ONLY
def test_wrong_digest_never_reaches_blobs(node, s3, bucket, extra):
    """A refused digest is found before the blob is made durable and renamed: `blobs/` never
    holds the rejected body, not even for a moment (watched while the PUT runs)."""
    import threading
    blobs = node.data_dir / "blobs"
    before = len(list(blobs.iterdir()))
    peak = [before]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], len(list(blobs.iterdir())))

    t = threading.Thread(target=watch)
    t.start()
    try:
        for i in range(3):
            expect_error(400, "BadDigest", s3.put_object, Bucket=bucket, Key=f"wrong-{i}",
                         Body=os.urandom(8 << 20), **extra)
    finally:
        done.set()
        t.join()
    assert peak[0] == before
    assert len(list(blobs.iterdir())) == before


def _signed_chunked_put(node, bucket, key, data: bytes, tamper: bool):
    """PUT with `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` (each chunk signed, chained from the seed
    signature); `tamper` spoils the last data chunk's signature."""
    import hmac

    import requests
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from .conftest import SECRET_KEY

    pieces = [data[i:i + 65536] for i in range(0, len(data), 65536)] + [b""]
    body_len = sum(len(f"{len(p):x};chunk-signature=".encode()) + 64 + 2 + len(p) + 2 for p in pieces)
    url = f"{node.endpoint}/{bucket}/{key}"
    req = AWSRequest(method="PUT", url=url, headers={
        "Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data)),
        "X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "Content-Length": str(body_len)})
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", REGION).add_auth(req)
    stamp = req.headers["X-Amz-Date"]
    scope = f"{stamp[:8]}/{REGION}/s3/aws4_request"
    prev = req.headers["Authorization"].rsplit("Signature=", 1)[1]
    k = ("AWS4" + SECRET_KEY).encode()
    for part in (stamp[:8], REGION, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    empty = hashlib.sha256(b"").hexdigest()
    body = b""
    for i, p in enumerate(pieces):
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", stamp, scope, prev, empty,
                             hashlib.sha256(p).hexdigest()])
        sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        prev = sig
        if tamper and i == len(pieces) - 2:
            sig = "0" * 64
        body += f"{len(p):x};chunk-signature={sig}\r\n".encode() + p + b"\r\n"
    assert len(body) == body_len
    return requests.put(url, data=body, headers=dict(req.headers), timeout=10)


def test_bad_chunk_signature_is_signature_does_not_match(node, s3, bucket):
    """A body-stream failure keeps its kind: a spoiled chunk signature is 403
    SignatureDoesNotMatch (was 400 IncompleteBody), and nothing is stored."""
    data = os.urandom(200_000)
    ok = _signed_chunked_put(node, bucket, "signed-chunks", data, tamper=False)
    assert ok.status_code == 200, ok.text
    assert s3.get_object(Bucket=bucket, Key="signed-chunks")["Body"].read() == data
    bad = _signed_chunked_put(node, bucket, "signed-chunks-bad", data, tamper=True)
    assert bad.status_code == 403, bad.text
    assert "<Code>SignatureDoesNotMatch</Code>" in bad.text
    expect_error(404, "NoSuchKey", s3.get_object, Bucket=bucket, Key="signed-chunks-bad")


@pytest.mark.parametrize("sent,stored", [("aws-chunked", None), ("aws-chunked,gzip", "gzip"),
                                         ("gzip, aws-chunked", "gzip")])
def test_aws_chunked_is_never_stored_as_content_encoding(node, s3, bucket, sent, stored):
    """Issue 11 E21: `aws-chunked` frames the request body only; AWS never stores it in the
    object's Content-Encoding (and stores none when it was the only value)."""
    data = os.urandom(20000)
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    r = _chunked_put(node, bucket, "enc", data, "x-amz-checksum-crc32", crc, content_encoding=sent)
    assert r.status_code == 200, r.text
    head = s3.head_object(Bucket=bucket, Key="enc")
    assert head.get("ContentEncoding") == stored, head
    got = s3.get_object(Bucket=bucket, Key="enc")
    assert got.get("ContentEncoding") == stored
    assert got["Body"].read() == data
