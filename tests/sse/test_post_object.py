"""POST Object (browser form upload, issue 11 B4 + B5) against a real KMS: SSE and SSE-C form
fields are honoured and validated like the headers, the policy is verified (signature,
expiration, conditions, bucket, every field covered), `${filename}`, success_action_status and
checksum fields work, and an unsigned form of any size is refused before its file is read, with
the node's memory bounded."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import select
import socket
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import coffer_blobstore
import pytest
import requests

from .harness import (
    ACCESS_KEY,
    KEY_A,
    KEY_A_MD5,
    KEY_B,
    MiB,
    REGION,
    SECRET_KEY,
    SSE_HDR,
    SSEC_ALG,
    SSEC_MD5,
    b64,
    create_bucket,
    expect_error,
    get_bytes,
    md5b64,
    rand,
    ssec,
)

SSEC_FIELDS = {
    "x-amz-server-side-encryption-customer-algorithm": "AES256",
    "x-amz-server-side-encryption-customer-key": b64(KEY_A),
    "x-amz-server-side-encryption-customer-key-MD5": KEY_A_MD5,
}


def sign_policy(policy: dict, *, region: str = REGION, secret: str = SECRET_KEY,
                when: dt.datetime | None = None) -> dict:
    """SigV4 POST fields for ``policy`` (its conditions get the x-amz-* fields added)."""
    when = when or dt.datetime.now(dt.timezone.utc)
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    cred = f"{ACCESS_KEY}/{day}/{region}/s3/aws4_request"
    policy = dict(policy)
    policy["conditions"] = list(policy["conditions"]) + [
        {"x-amz-algorithm": "AWS4-HMAC-SHA256"}, {"x-amz-credential": cred}, {"x-amz-date": amz_date}]
    b64_policy = base64.b64encode(json.dumps(policy).encode()).decode()
    k = ("AWS4" + secret).encode()
    for part in (day, region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, b64_policy.encode(), hashlib.sha256).hexdigest()
    return {"x-amz-algorithm": "AWS4-HMAC-SHA256", "x-amz-credential": cred, "x-amz-date": amz_date,
            "policy": b64_policy, "x-amz-signature": sig}


def expiry(seconds: int = 600) -> str:
    t = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def form(bucket: str, fields: dict, *, extra_conditions: list | None = None, uncovered: dict | None = None,
         expires_in: int = 600, policy_bucket: str | None = None, **sign) -> dict:
    """A signed form whose policy covers every field of ``fields`` with an exact condition;
    ``uncovered`` fields are sent without a condition."""
    conds: list = [{"bucket": policy_bucket or bucket}]
    conds += [{k: v} for k, v in fields.items()]
    conds += extra_conditions or []
    out = dict(fields)
    out.update(sign_policy({"expiration": expiry(expires_in), "conditions": conds}, **sign))
    out.update(uncovered or {})
    return out


def post(node, bucket: str, fields: dict, data: bytes, filename: str = "upload.bin") -> requests.Response:
    return requests.post(f"{node.url}/{bucket}", data=fields, files={"file": (filename, data)}, timeout=60)


def error_of(r: requests.Response) -> tuple[str | None, str]:
    try:
        root = ET.fromstring(r.content)
    except ET.ParseError:
        return None, ""
    return root.findtext("Code"), root.findtext("Message") or ""


def keys(client, bucket: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


# ---------------------------------------------------------------- encryption (B4)


def test_post_sse_c_is_readable_only_with_the_key(node, s3, bucket):
    data = rand(200_000)
    r = post(node, bucket, form(bucket, {"key": "ssec", **SSEC_FIELDS}), data)
    assert r.status_code == 204, r.text
    assert r.headers.get(SSEC_ALG) == "AES256" and r.headers.get(SSEC_MD5) == KEY_A_MD5
    assert SSE_HDR not in {k.lower() for k in r.headers}
    assert r.headers["ETag"].strip('"') != hashlib.md5(data).hexdigest()  # no plaintext fingerprint
    expect_error(400, "InvalidRequest", s3.get_object, Bucket=bucket, Key="ssec")
    expect_error(403, "AccessDenied", s3.get_object, Bucket=bucket, Key="ssec", **ssec(KEY_B))
    got, resp = get_bytes(s3, bucket, "ssec", **ssec(KEY_A))
    assert got == data
    h = {k.lower(): v for k, v in resp["ResponseMetadata"]["HTTPHeaders"].items()}
    assert h.get(SSEC_ALG) == "AES256" and h.get(SSEC_MD5) == KEY_A_MD5


def test_post_sse_s3_on_a_bucket_without_default_is_encrypted(plain_node, plain_s3, plain_bucket):
    marker = b"COFFER-POST-MARKER-" + rand(8).hex().encode()
    data = (marker + b"|") * 4000
    r = post(plain_node, plain_bucket, form(plain_bucket, {"key": "sse", "x-amz-server-side-encryption": "AES256"}),
             data)
    assert r.status_code == 204, r.text
    assert r.headers.get(SSE_HDR) == "AES256"
    h = plain_s3.head_object(Bucket=plain_bucket, Key="sse")
    assert h.get("ServerSideEncryption") == "AES256"
    assert get_bytes(plain_s3, plain_bucket, "sse")[0] == data
    # a plaintext upload next to it is found on disk, the encrypted one is not
    r = post(plain_node, plain_bucket, form(plain_bucket, {"key": "plain"}), b"PLAIN-" + marker)
    assert r.status_code == 204, r.text
    assert plain_s3.head_object(Bucket=plain_bucket, Key="plain").get("ServerSideEncryption") is None
    blobs = coffer_blobstore.blob_bytes(plain_node.data_dir)
    with_marker = [b for b in blobs.values() if marker in b]
    assert len(with_marker) == 1, len(with_marker)  # only the plaintext object's blob
    assert b"PLAIN-" + marker in with_marker[0]


# (name, fields, status, code) -- the same answers as the equivalent headers
BAD_SSE = [
    ("md5-mismatch", {**SSEC_FIELDS, "x-amz-server-side-encryption-customer-key-MD5": md5b64(KEY_B)},
     400, "InvalidArgument"),
    ("no-md5", {k: v for k, v in SSEC_FIELDS.items() if not k.endswith("MD5")}, 400, "InvalidArgument"),
    ("no-key", {k: v for k, v in SSEC_FIELDS.items() if not k.endswith("-key")}, 400, "InvalidArgument"),
    ("bad-algorithm", {**SSEC_FIELDS, "x-amz-server-side-encryption-customer-algorithm": "AES128"},
     400, "InvalidEncryptionAlgorithmError"),
    ("short-key", {**SSEC_FIELDS, "x-amz-server-side-encryption-customer-key": b64(b"k" * 16),
                   "x-amz-server-side-encryption-customer-key-MD5": md5b64(b"k" * 16)}, 400, "InvalidArgument"),
    ("sse-and-ssec", {**SSEC_FIELDS, "x-amz-server-side-encryption": "AES256"}, 400, "InvalidArgument"),
    ("unknown-sse", {"x-amz-server-side-encryption": "AES128"}, 400, "InvalidArgument"),
    # SSE-KMS needs TLS unless allow_sse_kms_over_http (SSE-KMS POSTs: test_sse_kms.py).
    ("kms-over-http", {"x-amz-server-side-encryption": "aws:kms"}, 400, "InvalidRequest"),
    ("kms-dsse", {"x-amz-server-side-encryption": "aws:kms:dsse"}, 501, "NotImplemented"),
]


@pytest.mark.parametrize("name,fields,status,code", BAD_SSE, ids=[b[0] for b in BAD_SSE])
def test_post_sse_fields_are_validated_like_headers(node, s3, bucket, name, fields, status, code):
    r = post(node, bucket, form(bucket, {"key": "bad", **fields}), b"some data")
    assert r.status_code == status, (r.status_code, r.text)
    assert error_of(r)[0] == code, r.text
    assert b64(KEY_A).encode() not in r.content
    assert keys(s3, bucket) == []


def test_post_ssec_over_plain_http_is_refused(start_node):
    n = start_node(allow_ssec_over_http=False)
    c = n.client()
    b = create_bucket(c)
    r = post(n, b, form(b, {"key": "k", **SSEC_FIELDS}), b"x")
    assert r.status_code == 400 and error_of(r)[0] == "InvalidRequest", r.text
    assert keys(c, b) == []


# ---------------------------------------------------------------- policy


def test_post_policy_violations_are_access_denied(node, s3, bucket):
    other = create_bucket(s3)
    cases = {
        # policy signed for another bucket
        "wrong-bucket": (form(bucket, {"key": "a"}, policy_bucket=other), 403, "AccessDenied"),
        # a starts-with condition the key does not meet
        "starts-with": ({**form(bucket, {}, extra_conditions=[["starts-with", "$key", "user/"]]),
                         "key": "other/a"}, 403, "AccessDenied"),
        # a field no condition names (SSE-C fields smuggled past the policy)
        "uncovered": (form(bucket, {"key": "a"}, uncovered=SSEC_FIELDS), 403, "AccessDenied"),
        # an eq condition on a field that is missing
        "missing-field": (form(bucket, {"key": "a"}, extra_conditions=[["eq", "$Content-Type", "image/png"]]),
                          403, "AccessDenied"),
        "expired": (form(bucket, {"key": "a"}, expires_in=-60), 403, "AccessDenied"),
        "bad-signature": (form(bucket, {"key": "a"}, secret="not-the-secret"), 403, "SignatureDoesNotMatch"),
        "other-region": (form(bucket, {"key": "a"}, region="eu-west-1"), 400, "AuthorizationQueryParametersError"),
    }
    for name, (fields, status, code) in cases.items():
        r = post(node, bucket, fields, b"data")
        assert (r.status_code, error_of(r)[0]) == (status, code), (name, r.status_code, r.text)
    # a tampered policy (condition swapped after signing)
    f = form(bucket, {}, extra_conditions=[["starts-with", "$key", "user/"]])
    doc = json.loads(base64.b64decode(f["policy"]))
    doc["conditions"] = [c if c != ["starts-with", "$key", "user/"] else ["starts-with", "$key", ""]
                         for c in doc["conditions"]]
    f["policy"] = base64.b64encode(json.dumps(doc).encode()).decode()
    r = post(node, bucket, {**f, "key": "other/a"}, b"data")
    assert (r.status_code, error_of(r)[0]) == (403, "SignatureDoesNotMatch"), r.text
    assert keys(s3, bucket) == [] and keys(s3, other) == []


def test_post_content_length_range(node, s3, bucket):
    rng = [["content-length-range", 10, 1000]]
    for name, size, status, code in (("small", 5, 400, "EntityTooSmall"), ("large", 5000, 400, "EntityTooLarge")):
        r = post(node, bucket, form(bucket, {"key": name}, extra_conditions=rng), rand(size))
        assert (r.status_code, error_of(r)[0]) == (status, code), (name, r.text)
    r = post(node, bucket, form(bucket, {"key": "ok"}, extra_conditions=rng), rand(1000))
    assert r.status_code == 204, r.text
    assert keys(s3, bucket) == ["ok"]


def test_post_refuses_sigv2_and_anonymous_forms(node, s3, bucket):
    r = post(node, bucket, {"key": "v2", "AWSAccessKeyId": ACCESS_KEY, "policy": "e30=", "signature": "c2ln"},
             b"data")
    assert r.status_code == 400 and error_of(r) == (
        "InvalidRequest",
        "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."), r.text
    r = post(node, bucket, {"key": "anon"}, b"data")
    assert r.status_code == 403 and error_of(r)[0] == "AccessDenied", r.text
    r = post(node, bucket, {"key": "half", "policy": "e30="}, b"data")
    assert r.status_code == 400 and error_of(r)[0] == "InvalidArgument", r.text
    assert keys(s3, bucket) == []


# ---------------------------------------------------------------- form features


def test_post_filename_status_metadata_checksums(node, s3, bucket):
    data = rand(70_000)
    fields = {"key": "up/${filename}", "Content-Type": "image/png", "x-amz-meta-colour": "blue",
              "success_action_status": "201",
              "x-amz-checksum-sha256": b64(hashlib.sha256(data).digest())}
    f = form(bucket, {k: v for k, v in fields.items() if k != "key"},
             extra_conditions=[["starts-with", "$key", "up/"]])
    r = post(node, bucket, {**f, "key": fields["key"]}, data, filename="cat.png")
    assert r.status_code == 201, r.text
    root = ET.fromstring(r.content)
    assert root.tag == "PostResponse"
    assert root.findtext("Bucket") == bucket and root.findtext("Key") == "up/cat.png"
    assert root.findtext("ETag") == r.headers["ETag"]
    assert root.findtext("Location").endswith(f"/{bucket}/up/cat.png")
    h = s3.head_object(Bucket=bucket, Key="up/cat.png")
    assert h["ContentType"] == "image/png" and h["Metadata"] == {"colour": "blue"}
    assert h.get("ServerSideEncryption") == "AES256"  # bucket default
    assert get_bytes(s3, bucket, "up/cat.png")[0] == data
    # 200: empty body; default: 204
    r = post(node, bucket, form(bucket, {"key": "s200", "success_action_status": "200"}), b"x")
    assert r.status_code == 200 and r.content == b"", r.text
    r = post(node, bucket, form(bucket, {"key": "s204"}), b"x")
    assert r.status_code == 204 and r.headers.get("ETag"), r.text
    # a wrong checksum field: 400 BadDigest, nothing stored
    bad = {"key": "bad-sum", "x-amz-checksum-sha256": b64(hashlib.sha256(b"other").digest())}
    r = post(node, bucket, form(bucket, bad), data)
    assert r.status_code == 400 and error_of(r)[0] == "BadDigest", r.text
    assert "bad-sum" not in keys(s3, bucket)


def test_post_to_missing_bucket_or_object_path(node, s3, bucket):
    missing = "nope-" + uuid.uuid4().hex[:10]
    r = post(node, missing, form(missing, {"key": "a"}), b"x")
    assert r.status_code == 404 and error_of(r)[0] == "NoSuchBucket", r.text
    r = requests.post(f"{node.url}/{bucket}/obj", data=form(bucket, {"key": "a"}), files={"file": ("f", b"x")},
                      timeout=30)
    assert r.status_code == 405 and error_of(r)[0] == "MethodNotAllowed", r.text
    no_file = [(k, (None, v)) for k, v in form(bucket, {"key": "a"}).items()]
    r = requests.post(f"{node.url}/{bucket}", files=no_file, timeout=30)
    assert r.status_code == 400 and error_of(r)[0] == "IncorrectNumberOfFilesInPostRequest", r.text
    assert keys(s3, bucket) == []


# ---------------------------------------------------------------- memory (B5)


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def anonymous_big_post(url: str, bucket: str, size: int, out: dict) -> None:
    """Stream a ``size``-byte anonymous form and stop as soon as the node answers."""
    host, port = urllib.parse.urlsplit(url).netloc.rsplit(":", 1)
    boundary = "coffer" + uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\nbig\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    total = len(head) + size + len(tail)
    s = socket.create_connection((host, int(port)), timeout=30)
    s.sendall((f"POST /{bucket} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
               f"Content-Length: {total}\r\n\r\n").encode() + head)
    chunk = b"\0" * MiB
    sent = 0
    started = time.monotonic()
    resp = b""
    try:
        while sent < size:
            r, _, _ = select.select([s], [], [], 0)
            if r:
                break
            s.sendall(chunk)
            sent += len(chunk)
    except OSError as e:  # the node answered and closed while we were sending
        out["send_error"] = repr(e)
    try:
        s.settimeout(30)
        while b"\r\n\r\n" not in resp:
            got = s.recv(65536)
            if not got:
                break
            resp += got
    except OSError as e:
        out["recv_error"] = repr(e)
    finally:
        s.close()
    out.update(sent=sent, seconds=time.monotonic() - started, response=resp)


def test_anonymous_huge_forms_keep_memory_bounded(start_node):
    n = start_node(default_encryption="none")
    c = n.client()
    b = create_bucket(c)
    pid = n.proc.popen.pid
    results = [{}, {}]
    threads = [threading.Thread(target=anonymous_big_post, args=(n.url, b, 256 * MiB, r)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for r in results:
        assert r.get("response", b"").startswith(b"HTTP/1.1 403"), r
        assert r["sent"] < 64 * MiB, f"the node read {r['sent'] // MiB} MiB before answering"
    hwm = vm_hwm_kib(pid)
    print(f"anonymous: sent {[r['sent'] // MiB for r in results]} MiB, "
          f"{[round(r['seconds'], 3) for r in results]} s, VmHWM {hwm // 1024} MiB")
    assert hwm < 200 * 1024, f"VmHWM {hwm // 1024} MiB"
    # the node still serves, and a signed form of 96 MiB streams with bounded memory
    data = os.urandom(MiB) * 96
    r = post(n, b, form(b, {"key": "signed-big"}), data)
    assert r.status_code == 204, r.text
    assert c.head_object(Bucket=b, Key="signed-big")["ContentLength"] == len(data)
    hwm = vm_hwm_kib(pid)
    print(f"after a 96 MiB signed POST: VmHWM {hwm // 1024} MiB")
    assert hwm < 200 * 1024, f"VmHWM {hwm // 1024} MiB after a 96 MiB signed POST"
    assert keys(c, b) == ["signed-big"]
