"""Bucket default encryption: Put/Get/DeleteBucketEncryption (E27, E28, E29), the node setting
`--default-encryption`, precedence of request headers, SSE-C never a default."""

from __future__ import annotations

import pytest

from .harness import (
    KEY_A,
    SSE_HDR,
    assert_plain,
    assert_sse_s3,
    assert_ssec,
    create_bucket,
    error_code_of,
    expect_error,
    get_bytes,
    md5b64,
    md5hex,
    rand,
    signed_request,
    ssec,
    ssec_src,
)

AES256_CFG = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"},
                         "BucketKeyEnabled": False}]}

SPEC_XML = b"""<ServerSideEncryptionConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Rule>
    <ApplyServerSideEncryptionByDefault>
      <SSEAlgorithm>AES256</SSEAlgorithm>
    </ApplyServerSideEncryptionByDefault>
    <BucketKeyEnabled>false</BucketKeyEnabled>
  </Rule>
</ServerSideEncryptionConfiguration>"""


def default_alg(s3, bucket):
    r = s3.get_bucket_encryption(Bucket=bucket)
    rules = r["ServerSideEncryptionConfiguration"]["Rules"]
    assert len(rules) == 1, rules
    return rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"]


def assert_no_default(s3, bucket):
    """A refused configuration left no default behind: a header-less PUT stays plaintext.
    (Independent of E27's exact status, which has its own tests.)"""
    r = s3.put_object(Bucket=bucket, Key="probe-" + rand(4).hex(), Body=b"probe")
    assert_plain(r, "PUT after a refused PutBucketEncryption")


def put_xml(node, bucket, body: bytes):
    return signed_request(node, "PUT", f"/{bucket}", "encryption",
                          headers={"Content-MD5": md5b64(body), "Content-Type": "application/xml"}, body=body)


# ------------------------------------------------------------------ node setting


def test_node_default_is_sse_s3(s3, bucket):
    """`node` is started without --default-encryption: new buckets get an AES256 default."""
    assert default_alg(s3, bucket) == "AES256"
    data = rand(5000)
    r = s3.put_object(Bucket=bucket, Key="o", Body=data)
    assert_sse_s3(r, "PUT without headers into a default bucket")
    assert r["ETag"].strip('"') == md5hex(data)
    got, r = get_bytes(s3, bucket, "o")
    assert got == data
    assert_sse_s3(r, "GET")
    assert_sse_s3(s3.head_object(Bucket=bucket, Key="o"), "HEAD")


def test_node_flag_sse_s3(start_node):
    n = start_node(default_encryption="sse-s3")
    c = n.client()
    b = create_bucket(c)
    assert default_alg(c, b) == "AES256"
    assert_sse_s3(c.put_object(Bucket=b, Key="o", Body=b"x"), "PUT")
    r = c.create_multipart_upload(Bucket=b, Key="m")
    assert_sse_s3(r, "CreateMultipartUpload under the bucket default")


def test_node_flag_none(plain_s3, plain_bucket):
    expect_error(404, "ServerSideEncryptionConfigurationNotFoundError", plain_s3.get_bucket_encryption,
                 Bucket=plain_bucket)
    r = plain_s3.put_object(Bucket=plain_bucket, Key="o", Body=b"x")
    assert_plain(r, "PUT into a bucket without default")
    assert_plain(plain_s3.head_object(Bucket=plain_bucket, Key="o"), "HEAD")


# ------------------------------------------------------------------ Put/Get/Delete (E27, E28)


def test_put_get_delete_bucket_encryption(plain_s3, plain_bucket, plain_node):
    s3, b = plain_s3, plain_bucket
    s3.put_object(Bucket=b, Key="before", Body=b"before")
    # a complete configuration document sent as raw XML, byte for byte
    r = put_xml(plain_node, b, SPEC_XML)
    assert r.status_code == 200, (r.status_code, r.text)
    assert default_alg(s3, b) == "AES256"
    # Changing the default affects new writes only
    assert_plain(s3.head_object(Bucket=b, Key="before"), "object written before the default")
    assert_sse_s3(s3.put_object(Bucket=b, Key="after", Body=b"after"), "PUT after PutBucketEncryption")
    # boto3's form too
    s3.put_bucket_encryption(Bucket=b, ServerSideEncryptionConfiguration=AES256_CFG)
    assert default_alg(s3, b) == "AES256"
    # raw GET: XML shape
    g = signed_request(plain_node, "GET", f"/{b}", "encryption")
    assert g.status_code == 200
    assert b"<ServerSideEncryptionConfiguration" in g.content and b"<SSEAlgorithm>AES256</SSEAlgorithm>" in g.content
    # delete: 204, then 404, and old SSE-S3 objects stay SSE-S3
    d = s3.delete_bucket_encryption(Bucket=b)
    assert d["ResponseMetadata"]["HTTPStatusCode"] == 204
    expect_error(404, "ServerSideEncryptionConfigurationNotFoundError", s3.get_bucket_encryption, Bucket=b)
    assert_sse_s3(s3.head_object(Bucket=b, Key="after"), "old object after DeleteBucketEncryption")
    got, _ = get_bytes(s3, b, "after")
    assert got == b"after"
    assert_plain(s3.put_object(Bucket=b, Key="after-delete", Body=b"x"), "PUT after DeleteBucketEncryption")


def test_e28_delete_bucket_encryption_when_none(plain_s3, plain_bucket):
    for _ in range(2):
        d = plain_s3.delete_bucket_encryption(Bucket=plain_bucket)
        assert d["ResponseMetadata"]["HTTPStatusCode"] == 204
    expect_error(404, "ServerSideEncryptionConfigurationNotFoundError", plain_s3.get_bucket_encryption,
                 Bucket=plain_bucket)


def test_e27_after_deleting_node_default(s3, bucket):
    s3.delete_bucket_encryption(Bucket=bucket)
    expect_error(404, "ServerSideEncryptionConfigurationNotFoundError", s3.get_bucket_encryption, Bucket=bucket)
    assert_plain(s3.put_object(Bucket=bucket, Key="o", Body=b"x"), "PUT after deleting the node default")


def test_bucket_encryption_missing_bucket(s3):
    expect_error(404, "NoSuchBucket", s3.get_bucket_encryption, Bucket="sse-no-such-bucket-here")
    expect_error(404, "NoSuchBucket", s3.put_bucket_encryption, Bucket="sse-no-such-bucket-here",
                 ServerSideEncryptionConfiguration=AES256_CFG)


# ------------------------------------------------------------------ E29


def test_e29_bad_xml(plain_node, plain_s3, plain_bucket):
    for body in (b"<ServerSideEncryptionConfiguration><Rule>", b"not xml at all",
                 b"<ServerSideEncryptionConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                 b"</ServerSideEncryptionConfiguration>"):
        r = put_xml(plain_node, plain_bucket, body)
        assert r.status_code == 400, (body, r.status_code, r.text)
        assert error_code_of(r) == "MalformedXML", (body, r.text)
    assert_no_default(plain_s3, plain_bucket)


def test_e29_two_rules(plain_s3, plain_bucket):
    rule = {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
    expect_error(400, ("MalformedXML", "InvalidArgument"), plain_s3.put_bucket_encryption, Bucket=plain_bucket,
                 ServerSideEncryptionConfiguration={"Rules": [rule, rule]})
    assert_no_default(plain_s3, plain_bucket)


def test_e29_kms_key_id_with_aes256(plain_s3, plain_bucket):
    cfg = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256", "KMSMasterKeyID": "k1"}}]}
    expect_error(400, "InvalidArgument", plain_s3.put_bucket_encryption, Bucket=plain_bucket,
                 ServerSideEncryptionConfiguration=cfg)
    assert_no_default(plain_s3, plain_bucket)


def test_e29_unknown_algorithm_and_no_ssec_default(plain_node, plain_s3, plain_bucket):
    """SSE-C can never be a bucket default: there is no such SSEAlgorithm."""
    for alg in (b"SSE-C", b"AES128", b"aws:kms:dsse-unknown"):
        body = SPEC_XML.replace(b"AES256", alg)
        r = put_xml(plain_node, plain_bucket, body)
        assert r.status_code == 400, (alg, r.status_code, r.text)
        assert error_code_of(r) in ("MalformedXML", "InvalidArgument"), (alg, r.text)
    assert_no_default(plain_s3, plain_bucket)


# ------------------------------------------------------------------ precedence


def test_request_headers_win_over_default(s3, bucket):
    data = rand(3000)
    r = s3.put_object(Bucket=bucket, Key="c", Body=data, **ssec(KEY_A))
    assert_ssec(r, KEY_A, "SSE-C PUT into an SSE-S3-default bucket")
    expect_error(400, "InvalidRequest", s3.get_object, Bucket=bucket, Key="c")
    got, r = get_bytes(s3, bucket, "c", **ssec(KEY_A))
    assert got == data
    # SSE-C never becomes the default: the next header-less write is SSE-S3
    r = s3.put_object(Bucket=bucket, Key="d", Body=data)
    assert_sse_s3(r, "PUT without headers after an SSE-C PUT")
    got, _ = get_bytes(s3, bucket, "d")
    assert got == data
    # multipart: SSE-C initiate in a default bucket
    r = s3.create_multipart_upload(Bucket=bucket, Key="m", **ssec(KEY_A))
    assert_ssec(r, KEY_A, "CreateMultipartUpload SSE-C in default bucket")
    assert SSE_HDR not in {k.lower() for k in r["ResponseMetadata"]["HTTPHeaders"]}


def test_default_applies_to_copy_and_multipart(s3, bucket, plain_s3, plain_bucket):
    # copy of a plain object into a default bucket (same node: copy within `bucket`)
    s3.delete_bucket_encryption(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="plain", Body=b"p" * 100)
    assert_plain(s3.head_object(Bucket=bucket, Key="plain"), "plain source")
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration=AES256_CFG)
    r = s3.copy_object(Bucket=bucket, Key="copied", CopySource={"Bucket": bucket, "Key": "plain"})
    assert_sse_s3(r, "CopyObject into a default bucket")
    assert_sse_s3(s3.head_object(Bucket=bucket, Key="copied"), "HEAD of the copy")
    # copy of an SSE-C object without destination headers: decrypted, then the default applies
    s3.put_object(Bucket=bucket, Key="ssec", Body=b"c" * 100, **ssec(KEY_A))
    r = s3.copy_object(Bucket=bucket, Key="from-ssec", CopySource={"Bucket": bucket, "Key": "ssec"},
                       **ssec_src(KEY_A))
    assert_sse_s3(r, "copy SSE-C -> default bucket")
    got, _ = get_bytes(s3, bucket, "from-ssec")
    assert got == b"c" * 100
    # multipart
    r = s3.create_multipart_upload(Bucket=bucket, Key="mp")
    assert_sse_s3(r, "CreateMultipartUpload under the default")
    up = r["UploadId"]
    p = s3.upload_part(Bucket=bucket, Key="mp", UploadId=up, PartNumber=1, Body=b"m" * 10)
    assert_sse_s3(p, "UploadPart under the default")
    r = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=up,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p["ETag"]}]})
    assert_sse_s3(r, "Complete under the default")
    assert_sse_s3(s3.head_object(Bucket=bucket, Key="mp"), "HEAD multipart under the default")


def test_default_change_mid_upload_does_not_change_upload(plain_s3, plain_bucket):
    """The encryption of a multipart upload is fixed at initiate."""
    s3, b = plain_s3, plain_bucket
    up = s3.create_multipart_upload(Bucket=b, Key="mp")["UploadId"]
    s3.put_bucket_encryption(Bucket=b, ServerSideEncryptionConfiguration=AES256_CFG)
    p = s3.upload_part(Bucket=b, Key="mp", UploadId=up, PartNumber=1, Body=b"z" * 10)
    s3.complete_multipart_upload(Bucket=b, Key="mp", UploadId=up,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p["ETag"]}]})
    assert_plain(s3.head_object(Bucket=b, Key="mp"), "upload initiated before the default")
