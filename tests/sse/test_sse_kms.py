"""SSE-KMS (`x-amz-server-side-encryption: aws:kms`) against the real processes (issue 13,
storage side): request validation, named keys, bucket defaults and bucket keys, copies,
multipart, POST, and KMS calls per GET read from /metrics. docs/s3-encryption.md "SSE-KMS".
"""

from __future__ import annotations

import base64
import json

import pytest
import requests

from .harness import (
    SSE_HDR,
    create_bucket,
    expect_error,
    get_bytes,
    headers_of,
    raw_headers,
)

KEY_ID_HDR = "x-amz-server-side-encryption-aws-kms-key-id"
CONTEXT_HDR = "x-amz-server-side-encryption-context"
BUCKET_KEY_HDR = "x-amz-server-side-encryption-bucket-key-enabled"
MSG_BAD_CONTEXT = (
    "The header 'x-amz-server-side-encryption-context' shall be Base64-encoded UTF-8 string "
    "holding JSON which represents a string-string map"
)


def b64json(v) -> str:
    return base64.b64encode(json.dumps(v).encode()).decode()


@pytest.fixture(scope="module")
def lax_node(start_node):
    """A plain-HTTP node that allows SSE-KMS over HTTP (`--allow-sse-kms-over-http`)."""
    return start_node(allow_sse_kms_over_http=True)


@pytest.fixture(scope="module")
def lax_s3(lax_node):
    return lax_node.client()


# ---------------------------------------------------------------- request validation (no KMS call)


BAD_CONTEXTS = [
    ("not-base64", "%%%not base64%%%"),
    ("not-json", base64.b64encode(b"team=a").decode()),
    ("array", b64json(["a", "b"])),
    ("number-value", b64json({"a": 1})),
    ("nested", b64json({"a": {"b": "c"}})),
    ("null-value", b64json({"a": None})),
    ("not-utf8", base64.b64encode(b"\xff\xfe{}").decode()),
]


@pytest.mark.parametrize("name,value", BAD_CONTEXTS, ids=[b[0] for b in BAD_CONTEXTS])
def test_a_context_that_is_not_base64_json_of_a_string_map_is_invalid_argument(lax_s3, name, value):
    b = create_bucket(lax_s3)
    with raw_headers(lax_s3, {CONTEXT_HDR: value}):
        expect_error(400, "InvalidArgument", lax_s3.put_object, Bucket=b, Key="o", Body=b"x",
                     ServerSideEncryption="aws:kms", message=MSG_BAD_CONTEXT)
        expect_error(400, "InvalidArgument", lax_s3.create_multipart_upload, Bucket=b, Key="m",
                     ServerSideEncryption="aws:kms", message=MSG_BAD_CONTEXT)
    expect_error(404, None, lax_s3.head_object, Bucket=b, Key="o")
    assert lax_s3.list_multipart_uploads(Bucket=b).get("Uploads", []) == []


def test_kms_headers_without_aws_kms_are_invalid_argument(lax_s3):
    b = create_bucket(lax_s3)
    expect_error(400, "InvalidArgument", lax_s3.put_object, Bucket=b, Key="o", Body=b"x",
                 SSEKMSKeyId="alias/x")
    expect_error(400, "InvalidArgument", lax_s3.put_object, Bucket=b, Key="o", Body=b"x",
                 ServerSideEncryption="AES256", SSEKMSKeyId="alias/x")
    with raw_headers(lax_s3, {CONTEXT_HDR: b64json({"a": "b"})}):
        expect_error(400, "InvalidArgument", lax_s3.put_object, Bucket=b, Key="o", Body=b"x",
                     ServerSideEncryption="AES256")
    with raw_headers(lax_s3, {BUCKET_KEY_HDR: "maybe"}):
        expect_error(400, "InvalidArgument", lax_s3.put_object, Bucket=b, Key="o", Body=b"x",
                     ServerSideEncryption="aws:kms")
    expect_error(404, None, lax_s3.head_object, Bucket=b, Key="o")


def test_dsse_is_not_implemented(lax_s3):
    b = create_bucket(lax_s3)
    expect_error(501, "NotImplemented", lax_s3.put_object, Bucket=b, Key="o", Body=b"x",
                 ServerSideEncryption="aws:kms:dsse")
    cfg = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms:dsse"}}]}
    expect_error(501, "NotImplemented", lax_s3.put_bucket_encryption, Bucket=b,
                 ServerSideEncryptionConfiguration=cfg)


def test_sse_kms_headers_on_get_and_head_are_refused(lax_s3):
    """AWS answers 400 to SSE-KMS request headers on GET and HEAD; the object is untouched."""
    b = create_bucket(lax_s3)
    lax_s3.put_object(Bucket=b, Key="o", Body=b"data", ServerSideEncryption="AES256")
    for hdrs in ({KEY_ID_HDR: "alias/x"}, {CONTEXT_HDR: b64json({"a": "b"})}):
        with raw_headers(lax_s3, hdrs):
            expect_error(400, "InvalidArgument", lax_s3.get_object, Bucket=b, Key="o")
            expect_error(400, None, lax_s3.head_object, Bucket=b, Key="o")
    with raw_headers(lax_s3, {SSE_HDR: "aws:kms"}):
        expect_error(400, "InvalidRequest", lax_s3.get_object, Bucket=b, Key="o")
    data, r = get_bytes(lax_s3, b, "o")
    assert data == b"data"
    assert headers_of(r)[SSE_HDR] == "AES256"


def test_metrics_count_kms_calls_per_mode(lax_node, lax_s3):
    """`coffer_kms_key_calls_total{mode, op}`: SSE-S3 bucket keys count under mode sse-s3."""
    b = create_bucket(lax_s3)
    lax_s3.put_object(Bucket=b, Key="o", Body=b"x", ServerSideEncryption="AES256")
    text = requests.get(lax_node.url + "/metrics", timeout=5).text
    for mode in ("sse-s3", "sse-kms", "sse-kms-bucket-key"):
        for op in ("generate", "decrypt"):
            assert f'coffer_kms_key_calls_total{{mode="{mode}",op="{op}"}}' in text, text
    line = next(x for x in text.splitlines()
                if x.startswith('coffer_kms_key_calls_total{mode="sse-s3",op="generate"}'))
    assert int(float(line.split()[-1])) >= 1
