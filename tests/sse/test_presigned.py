"""Presigned GET/PUT with SSE-C: the URL signs the algorithm header, the client sends key and key-MD5
as (unsigned) headers with `requests`; E3-E8 still apply to those headers."""

from __future__ import annotations

import pytest
import requests

from .harness import (
    KEY_A,
    KEY_A_B64,
    KEY_A_MD5,
    KEY_B,
    KEY_B_MD5,
    SSE_HDR,
    SSEC_ALG,
    SSEC_KEY,
    SSEC_MD5,
    b64,
    error_code_of,
    get_bytes,
    md5b64,
    md5hex,
    rand,
    ssec,
)


def presign(s3, op, bucket, key, alg="AES256", **extra):
    params = {"Bucket": bucket, "Key": key, **extra}
    if alg is not None:
        params["SSECustomerAlgorithm"] = alg
    url = s3.generate_presigned_url(op, Params=params, ExpiresIn=600)
    assert SSEC_KEY not in url.lower() and KEY_A_B64 not in url
    return url


def key_headers(key: bytes, alg="AES256"):
    h = {SSEC_KEY: b64(key), SSEC_MD5: md5b64(key)}
    if alg is not None:
        h[SSEC_ALG] = alg
    return h


def test_presigned_put_then_get_ssec(s3, bucket):
    data = rand(150_000)
    url = presign(s3, "put_object", bucket, "o")
    assert "x-amz-server-side-encryption-customer-algorithm" in url.lower()  # signed header list
    r = requests.put(url, data=data, headers=key_headers(KEY_A), timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers.get(SSEC_ALG) == "AES256"
    assert r.headers.get(SSEC_MD5) == KEY_A_MD5
    assert SSE_HDR not in {k.lower() for k in r.headers}
    assert r.headers["ETag"].strip('"') != md5hex(data)
    # readable through boto3 with the key, not without
    got, _ = get_bytes(s3, bucket, "o", **ssec(KEY_A))
    assert got == data

    url = presign(s3, "get_object", bucket, "o")
    r = requests.get(url, headers=key_headers(KEY_A), timeout=30)
    assert r.status_code == 200, r.text
    assert r.content == data
    assert r.headers.get(SSEC_MD5) == KEY_A_MD5
    # ranged presigned GET
    r = requests.get(url, headers={**key_headers(KEY_A), "Range": "bytes=65530-65545"}, timeout=30)
    assert r.status_code == 206 and r.content == data[65530:65546]
    # wrong key -> 403, no key -> 400 (E1)
    r = requests.get(url, headers=key_headers(KEY_B), timeout=30)
    assert r.status_code == 403 and error_code_of(r) == "AccessDenied", r.text
    assert data[:64] not in r.content
    r = requests.get(presign(s3, "get_object", bucket, "o", alg=None), timeout=30)
    assert r.status_code == 400 and error_code_of(r) == "InvalidRequest", r.text


def test_presigned_get_with_all_headers_signed(s3, bucket):
    """botocore signs the key and MD5 too when given them; the headers are still sent, never in the URL."""
    data = rand(1000)
    s3.put_object(Bucket=bucket, Key="o", Body=data, **ssec(KEY_A))
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "o", **ssec(KEY_A)})
    assert KEY_A_B64 not in url and b64(KEY_A).replace("+", "%2B").replace("/", "%2F") not in url
    r = requests.get(url, headers=key_headers(KEY_A), timeout=30)
    assert r.status_code == 200 and r.content == data


# (name, headers sent with the URL that signs algorithm AES256, expected code)
BAD = [
    ("E3-md5-mismatch", {SSEC_ALG: "AES256", SSEC_KEY: b64(KEY_A), SSEC_MD5: KEY_B_MD5}, "InvalidArgument"),
    ("E4-no-md5", {SSEC_ALG: "AES256", SSEC_KEY: b64(KEY_A)}, "InvalidArgument"),
    ("E5-no-key", {SSEC_ALG: "AES256", SSEC_MD5: KEY_A_MD5}, "InvalidArgument"),
    ("E5-alg-only", {SSEC_ALG: "AES256"}, "InvalidArgument"),
    ("E8-not-base64", {SSEC_ALG: "AES256", SSEC_KEY: "%%%notbase64", SSEC_MD5: KEY_A_MD5}, "InvalidArgument"),
    ("E8-short-key", {SSEC_ALG: "AES256", SSEC_KEY: b64(b"k" * 16), SSEC_MD5: md5b64(b"k" * 16)}, "InvalidArgument"),
]


@pytest.mark.parametrize("method", ["GET", "PUT"])
@pytest.mark.parametrize("name,headers,code", BAD, ids=[b[0] for b in BAD])
def test_presigned_malformed_key_headers(s3, bucket, method, name, headers, code):
    s3.put_object(Bucket=bucket, Key="o", Body=b"data", **ssec(KEY_A))
    if method == "GET":
        url = presign(s3, "get_object", bucket, "o")
        r = requests.get(url, headers=headers, timeout=30)
    else:
        url = presign(s3, "put_object", bucket, "new")
        r = requests.put(url, data=b"new data", headers=headers, timeout=30)
    assert r.status_code == 400, (r.status_code, r.text)
    assert error_code_of(r) == code, r.text
    if method == "PUT":
        assert s3.list_objects_v2(Bucket=bucket, Prefix="new").get("KeyCount", 0) == 0


def test_presigned_e6_key_without_algorithm(s3, bucket):
    s3.put_object(Bucket=bucket, Key="o", Body=b"data", **ssec(KEY_A))
    url = presign(s3, "get_object", bucket, "o", alg=None)
    r = requests.get(url, headers={SSEC_KEY: b64(KEY_A), SSEC_MD5: KEY_A_MD5}, timeout=30)
    assert r.status_code == 400 and error_code_of(r) == "InvalidArgument", r.text
    url = presign(s3, "put_object", bucket, "new", alg=None)
    r = requests.put(url, data=b"x", headers={SSEC_KEY: b64(KEY_A), SSEC_MD5: KEY_A_MD5}, timeout=30)
    assert r.status_code == 400 and error_code_of(r) == "InvalidArgument", r.text


def test_presigned_e7_signed_bad_algorithm(s3, bucket):
    url = presign(s3, "put_object", bucket, "new", alg="AES128")
    r = requests.put(url, data=b"x", headers=key_headers(KEY_A, alg="AES128"), timeout=30)
    assert r.status_code == 400 and error_code_of(r) == "InvalidEncryptionAlgorithmError", r.text


def test_presigned_e9_over_http_refused(strict_node):
    c = strict_node.client()
    b = "sse-presign-" + rand(6).hex()
    c.create_bucket(Bucket=b)
    url = presign(c, "put_object", b, "o")
    r = requests.put(url, data=b"x", headers=key_headers(KEY_A), timeout=30)
    assert r.status_code == 400 and error_code_of(r) == "InvalidRequest", r.text
    assert "secure connection" in r.text
