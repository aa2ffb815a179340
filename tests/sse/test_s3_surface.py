"""The plain S3 surface of the storage node (issue 3): buckets, listings, conditional requests,
batch delete, multipart rules, auth errors and NotImplemented, with boto3 against a real node."""

from __future__ import annotations

import hashlib
import os

import boto3
import pytest
from botocore.config import Config

from .harness import REGION, create_bucket, expect_error


@pytest.fixture
def pb(plain_s3):
    return create_bucket(plain_s3)


def test_buckets(plain_s3):
    b = create_bucket(plain_s3)
    assert plain_s3.create_bucket(Bucket=b)["ResponseMetadata"]["HTTPStatusCode"] == 200  # own bucket again: 200
    expect_error(400, "InvalidBucketName", plain_s3.create_bucket, Bucket="Bad_Name")
    expect_error(400, "InvalidBucketName", plain_s3.create_bucket, Bucket="ab")
    assert b in [x["Name"] for x in plain_s3.list_buckets()["Buckets"]]
    plain_s3.head_bucket(Bucket=b)
    assert plain_s3.get_bucket_location(Bucket=b).get("LocationConstraint") in (None, "")
    plain_s3.put_object(Bucket=b, Key="k", Body=b"x")
    expect_error(409, "BucketNotEmpty", plain_s3.delete_bucket, Bucket=b)
    plain_s3.delete_object(Bucket=b, Key="k")
    plain_s3.delete_bucket(Bucket=b)
    expect_error(404, None, plain_s3.head_bucket, Bucket=b)
    expect_error(404, "NoSuchBucket", plain_s3.list_objects_v2, Bucket=b)


def test_metadata_and_conditionals(plain_s3, pb):
    body = os.urandom(5000)
    etag = plain_s3.put_object(Bucket=pb, Key="m", Body=body, ContentType="text/x-coffer",
                               Metadata={"Colour": "blue"}, CacheControl="max-age=5")["ETag"]
    h = plain_s3.head_object(Bucket=pb, Key="m")
    assert h["ContentType"] == "text/x-coffer" and h["Metadata"] == {"colour": "blue"} and h["CacheControl"] == "max-age=5"
    r = plain_s3.get_object(Bucket=pb, Key="m", ResponseContentType="application/x-override")
    assert r["ContentType"] == "application/x-override"
    assert plain_s3.get_object(Bucket=pb, Key="m", IfMatch=etag)["Body"].read() == body
    expect_error(412, "PreconditionFailed", plain_s3.get_object, Bucket=pb, Key="m", IfMatch='"0000"')
    e = expect_error(304, None, plain_s3.get_object, Bucket=pb, Key="m", IfNoneMatch=etag)
    assert e is not None
    expect_error(404, "NoSuchKey", plain_s3.get_object, Bucket=pb, Key="missing")


def test_ranges(plain_s3, pb):
    body = os.urandom(1000)
    plain_s3.put_object(Bucket=pb, Key="r", Body=body)
    for rng, want, cr in [("bytes=0-9", body[:10], "bytes 0-9/1000"), ("bytes=500-599", body[500:600], "bytes 500-599/1000"),
                          ("bytes=-7", body[-7:], "bytes 993-999/1000"), ("bytes=990-", body[990:], "bytes 990-999/1000"),
                          ("bytes=900-5000", body[900:], "bytes 900-999/1000")]:
        r = plain_s3.get_object(Bucket=pb, Key="r", Range=rng)
        assert r["Body"].read() == want and r["ContentRange"] == cr, rng
    expect_error(416, "InvalidRange", plain_s3.get_object, Bucket=pb, Key="r", Range="bytes=1000-1001")


def test_delete_objects_reports_missing_keys_deleted(plain_s3, pb):
    plain_s3.put_object(Bucket=pb, Key="a", Body=b"1")
    r = plain_s3.delete_objects(Bucket=pb, Delete={"Objects": [{"Key": "a"}, {"Key": "never-existed"}]})
    assert sorted(d["Key"] for d in r["Deleted"]) == ["a", "never-existed"] and not r.get("Errors")
    assert plain_s3.list_objects_v2(Bucket=pb)["KeyCount"] == 0


def test_copy_directives(plain_s3, pb):
    plain_s3.put_object(Bucket=pb, Key="src", Body=b"data", Metadata={"a": "1"}, ContentType="text/plain")
    plain_s3.copy_object(Bucket=pb, Key="c1", CopySource={"Bucket": pb, "Key": "src"})
    assert plain_s3.head_object(Bucket=pb, Key="c1")["Metadata"] == {"a": "1"}
    plain_s3.copy_object(Bucket=pb, Key="c2", CopySource={"Bucket": pb, "Key": "src"}, MetadataDirective="REPLACE",
                         Metadata={"b": "2"}, ContentType="text/x")
    h = plain_s3.head_object(Bucket=pb, Key="c2")
    assert h["Metadata"] == {"b": "2"} and h["ContentType"] == "text/x"
    expect_error(400, "InvalidRequest", plain_s3.copy_object, Bucket=pb, Key="src", CopySource={"Bucket": pb, "Key": "src"})
    plain_s3.copy_object(Bucket=pb, Key="src", CopySource={"Bucket": pb, "Key": "src"}, MetadataDirective="REPLACE", Metadata={"c": "3"})
    assert plain_s3.get_object(Bucket=pb, Key="src")["Body"].read() == b"data"


def test_listing_edge_cases(plain_s3, pb):
    keys = ["a/1", "a/2", "b/1", "c", "d/x/y", "e"]
    for k in keys:
        plain_s3.put_object(Bucket=pb, Key=k, Body=b"")
    r = plain_s3.list_objects_v2(Bucket=pb, Delimiter="/")
    assert [c["Prefix"] for c in r["CommonPrefixes"]] == ["a/", "b/", "d/"]
    assert [o["Key"] for o in r["Contents"]] == ["c", "e"] and r["KeyCount"] == 5
    seen, token = [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        r = plain_s3.list_objects_v2(Bucket=pb, MaxKeys=2, Delimiter="/", **kw)
        seen += [c["Prefix"] for c in r.get("CommonPrefixes", [])] + [o["Key"] for o in r.get("Contents", [])]
        assert r["KeyCount"] <= 2
        if not r["IsTruncated"]:
            break
        token = r["NextContinuationToken"]
    assert sorted(seen) == ["a/", "b/", "c", "d/", "e"]
    assert [o["Key"] for o in plain_s3.list_objects_v2(Bucket=pb, StartAfter="b/1")["Contents"]] == ["c", "d/x/y", "e"]
    assert [o["Key"] for o in plain_s3.list_objects_v2(Bucket=pb, Prefix="a/")["Contents"]] == ["a/1", "a/2"]
    r = plain_s3.list_objects_v2(Bucket=pb, Prefix="a/", FetchOwner=True)
    assert "Owner" in r["Contents"][0]
    r = plain_s3.list_objects(Bucket=pb, Marker="c", MaxKeys=1)
    assert [o["Key"] for o in r["Contents"]] == ["d/x/y"] and r["IsTruncated"]
    v = plain_s3.list_object_versions(Bucket=pb, Prefix="a/")
    assert [(x["Key"], x["VersionId"]) for x in v["Versions"]] == [("a/1", "null"), ("a/2", "null")]


def test_multipart_rules(plain_s3, pb):
    big = os.urandom(5 * 1024 * 1024 + 3)
    tail = os.urandom(1234)
    up = plain_s3.create_multipart_upload(Bucket=pb, Key="mp")["UploadId"]
    e1 = plain_s3.upload_part(Bucket=pb, Key="mp", UploadId=up, PartNumber=1, Body=big)["ETag"]
    plain_s3.put_object(Bucket=pb, Key="src", Body=tail * 3)
    e2 = plain_s3.upload_part_copy(Bucket=pb, Key="mp", UploadId=up, PartNumber=2, CopySource={"Bucket": pb, "Key": "src"},
                                   CopySourceRange="bytes=1234-2467")["CopyPartResult"]["ETag"]
    parts = plain_s3.list_parts(Bucket=pb, Key="mp", UploadId=up)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, len(big)), (2, 1234)]
    assert up in [u["UploadId"] for u in plain_s3.list_multipart_uploads(Bucket=pb)["Uploads"]]
    expect_error(400, "InvalidPartOrder", plain_s3.complete_multipart_upload, Bucket=pb, Key="mp", UploadId=up,
                 MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}]})
    expect_error(400, "InvalidPart", plain_s3.complete_multipart_upload, Bucket=pb, Key="mp", UploadId=up,
                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 3, "ETag": e2}]})
    expect_error(400, "MalformedXML", plain_s3.complete_multipart_upload, Bucket=pb, Key="mp", UploadId=up,
                 MultipartUpload={"Parts": []})
    done = dict(Bucket=pb, Key="mp", UploadId=up, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    etag = plain_s3.complete_multipart_upload(**done)["ETag"]
    want = hashlib.md5(hashlib.md5(big).digest() + hashlib.md5(tail).digest()).hexdigest() + "-2"
    assert etag == f'"{want}"'
    assert plain_s3.complete_multipart_upload(**done)["ETag"] == etag  # repeated Complete succeeds
    assert plain_s3.get_object(Bucket=pb, Key="mp")["Body"].read() == big + tail
    assert plain_s3.get_object(Bucket=pb, Key="mp", PartNumber=2)["Body"].read() == tail
    # EntityTooSmall: a small part that is not the last
    up2 = plain_s3.create_multipart_upload(Bucket=pb, Key="small")["UploadId"]
    a = plain_s3.upload_part(Bucket=pb, Key="small", UploadId=up2, PartNumber=1, Body=b"x" * 100)["ETag"]
    b = plain_s3.upload_part(Bucket=pb, Key="small", UploadId=up2, PartNumber=2, Body=b"y" * 100)["ETag"]
    expect_error(400, "EntityTooSmall", plain_s3.complete_multipart_upload, Bucket=pb, Key="small", UploadId=up2,
                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": a}, {"PartNumber": 2, "ETag": b}]})
    plain_s3.abort_multipart_upload(Bucket=pb, Key="small", UploadId=up2)
    expect_error(404, "NoSuchUpload", plain_s3.abort_multipart_upload, Bucket=pb, Key="small", UploadId=up2)
    expect_error(404, "NoSuchUpload", plain_s3.upload_part, Bucket=pb, Key="small", UploadId=up2, PartNumber=1, Body=b"z")


def test_auth_errors_and_not_implemented(plain_node, plain_s3, pb):
    def client(access, secret):
        return boto3.client("s3", endpoint_url=plain_node.url, aws_access_key_id=access, aws_secret_access_key=secret,
                            region_name=REGION, config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))
    expect_error(403, "InvalidAccessKeyId", client("nobody", "x").list_buckets)
    from .harness import ACCESS_KEY
    expect_error(403, "SignatureDoesNotMatch", client(ACCESS_KEY, "wrong-secret").list_buckets)
    expect_error(501, "NotImplemented", plain_s3.put_bucket_tagging, Bucket=pb, Tagging={"TagSet": [{"Key": "k", "Value": "v"}]})


def test_checksums_verified_before_commit(plain_s3, pb):
    import base64
    import zlib
    body = os.urandom(70_000)
    good_sha = base64.b64encode(hashlib.sha256(body).digest()).decode()
    good_crc = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    plain_s3.put_object(Bucket=pb, Key="ok-sha", Body=body, ChecksumSHA256=good_sha)
    plain_s3.put_object(Bucket=pb, Key="ok-crc", Body=body, ChecksumCRC32=good_crc)
    bad = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    expect_error(400, "BadDigest", plain_s3.put_object, Bucket=pb, Key="bad-sha", Body=body, ChecksumSHA256=bad)
    expect_error(400, "BadDigest", plain_s3.put_object, Bucket=pb, Key="bad-crc", Body=body, ChecksumCRC32="AAAAAA==")
    keys = [o["Key"] for o in plain_s3.list_objects_v2(Bucket=pb)["Contents"]]
    assert keys == ["ok-crc", "ok-sha"]  # nothing committed for the mismatches


def test_health_metrics_and_buckets_with_those_names(plain_node, plain_s3):
    import requests
    assert requests.get(plain_node.url + "/health", timeout=5).text == "ok"
    assert "coffer_kms_calls_total" in requests.get(plain_node.url + "/metrics", timeout=5).text
    for name in ("health", "metrics"):
        plain_s3.create_bucket(Bucket=name)
        plain_s3.put_object(Bucket=name, Key="k", Body=b"v")
        assert [o["Key"] for o in plain_s3.list_objects_v2(Bucket=name)["Contents"]] == ["k"]
        plain_s3.delete_object(Bucket=name, Key="k")
        plain_s3.delete_bucket(Bucket=name)
