"""Objects: put/get/head/delete, metadata and content headers, conditionals, ranges, partNumber,
copy, batch delete, attributes, presigned URLs, error XML, and reads racing overwrites."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
import xml.etree.ElementTree as ET

import requests

from .util import MiB, expect_error


def test_put_get_head_delete_round_trip(s3, bucket):
    body = os.urandom(70_000)
    put = s3.put_object(Bucket=bucket, Key="dir/obj", Body=body, ContentType="text/x-coffer",
                        Metadata={"Colour": "blue", "n": "1"}, CacheControl="no-cache",
                        ContentDisposition="attachment; filename=x", ContentEncoding="identity",
                        ContentLanguage="fr", Expires=dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc))
    assert put["ETag"] == '"%s"' % hashlib.md5(body).hexdigest()
    g = s3.get_object(Bucket=bucket, Key="dir/obj")
    assert g["Body"].read() == body
    for r in (g, s3.head_object(Bucket=bucket, Key="dir/obj")):
        assert r["ContentLength"] == len(body) and r["ETag"] == put["ETag"]
        assert r["ContentType"] == "text/x-coffer" and r["Metadata"] == {"colour": "blue", "n": "1"}
        assert r["CacheControl"] == "no-cache" and r["ContentLanguage"] == "fr"
        assert r["ContentDisposition"] == "attachment; filename=x" and r["ContentEncoding"] == "identity"
        assert r["Expires"] == dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    o = s3.get_object(Bucket=bucket, Key="dir/obj", ResponseCacheControl="max-age=9",
                      ResponseContentDisposition="inline", ResponseContentLanguage="de",
                      ResponseContentType="image/png", ResponseContentEncoding="gzip")
    assert (o["CacheControl"], o["ContentDisposition"], o["ContentLanguage"], o["ContentType"],
            o["ContentEncoding"]) == ("max-age=9", "inline", "de", "image/png", "gzip")
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    e = s3.get_object(Bucket=bucket, Key="empty")
    assert e["Body"].read() == b"" and e["ContentType"] == "binary/octet-stream"
    assert s3.delete_object(Bucket=bucket, Key="dir/obj")["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.delete_object(Bucket=bucket, Key="dir/obj")["ResponseMetadata"]["HTTPStatusCode"] == 204
    expect_error(404, "NoSuchKey", s3.get_object, Bucket=bucket, Key="dir/obj")
    expect_error(404, None, s3.head_object, Bucket=bucket, Key="dir/obj")
    expect_error(404, "NoSuchBucket", s3.put_object, Bucket="no-such-bucket-x", Key="k", Body=b"1")


def test_overwrite_replaces_and_frees_old_blob(node, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"one")
    s3.put_object(Bucket=bucket, Key="k", Body=b"two!")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"two!"
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 1


def test_conditional_headers(s3, bucket):
    etag = s3.put_object(Bucket=bucket, Key="c", Body=b"data")["ETag"]
    past = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag)["Body"].read() == b"data"
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch="*")["Body"].read() == b"data"
    expect_error(412, "PreconditionFailed", s3.get_object, Bucket=bucket, Key="c", IfMatch='"beef"')
    expect_error(304, None, s3.get_object, Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert s3.get_object(Bucket=bucket, Key="c", IfNoneMatch='"beef"')["Body"].read() == b"data"
    expect_error(304, None, s3.get_object, Bucket=bucket, Key="c", IfModifiedSince=future)
    assert s3.get_object(Bucket=bucket, Key="c", IfModifiedSince=past)["Body"].read() == b"data"
    expect_error(412, "PreconditionFailed", s3.get_object, Bucket=bucket, Key="c", IfUnmodifiedSince=past)
    assert s3.get_object(Bucket=bucket, Key="c", IfUnmodifiedSince=future)["Body"].read() == b"data"
    # If-Match true + If-Unmodified-Since false: 200 (RFC 7232 precedence, as S3 does).
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag, IfUnmodifiedSince=past)["Body"].read() == b"data"
    # If-None-Match false + If-Modified-Since true: 304.
    expect_error(304, None, s3.get_object, Bucket=bucket, Key="c", IfNoneMatch=etag, IfModifiedSince=past)
    expect_error(412, None, s3.head_object, Bucket=bucket, Key="c", IfMatch='"beef"')
    expect_error(304, None, s3.head_object, Bucket=bucket, Key="c", IfNoneMatch=etag)


def test_ranges(s3, bucket):
    body = os.urandom(200_000)
    s3.put_object(Bucket=bucket, Key="r", Body=body)
    n = len(body)
    cases = [("bytes=0-0", 0, 0), ("bytes=0-99", 0, 99), ("bytes=65530-131080", 65530, 131080),
             ("bytes=-10", n - 10, n - 1), ("bytes=-999999", 0, n - 1), ("bytes=199990-", 199990, n - 1),
             ("bytes=199999-300000", 199999, n - 1)]
    for rng, s, e in cases:
        r = s3.get_object(Bucket=bucket, Key="r", Range=rng)
        assert r["ResponseMetadata"]["HTTPStatusCode"] == 206, rng
        assert r["Body"].read() == body[s:e + 1], rng
        assert r["ContentRange"] == f"bytes {s}-{e}/{n}" and r["ContentLength"] == e - s + 1
    for bad in ("bytes=200000-", "bytes=200000-200001"):
        e = expect_error(416, "InvalidRange", s3.get_object, Bucket=bucket, Key="r", Range=bad)
        assert e is not None
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    expect_error(416, "InvalidRange", s3.get_object, Bucket=bucket, Key="empty", Range="bytes=0-0")
    h = s3.head_object(Bucket=bucket, Key="r", Range="bytes=10-19")
    assert h["ContentLength"] == 10


def test_part_number_on_single_part_object(s3, bucket):
    s3.put_object(Bucket=bucket, Key="p", Body=b"abc")
    r = s3.get_object(Bucket=bucket, Key="p", PartNumber=1)
    assert r["Body"].read() == b"abc"
    expect_error(400, "InvalidPart", s3.get_object, Bucket=bucket, Key="p", PartNumber=2)
    expect_error(400, "InvalidRequest", s3.get_object, Bucket=bucket, Key="p", PartNumber=1, Range="bytes=0-1")


def test_copy_object(s3, bucket):
    body = os.urandom(10_000)
    s3.put_object(Bucket=bucket, Key="src", Body=body, ContentType="a/b", Metadata={"m": "1"})
    r = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert r["CopyObjectResult"]["ETag"] == '"%s"' % hashlib.md5(body).hexdigest()
    h = s3.head_object(Bucket=bucket, Key="dst")
    assert h["Metadata"] == {"m": "1"} and h["ContentType"] == "a/b"
    s3.copy_object(Bucket=bucket, Key="dst2", CopySource=f"{bucket}/src", MetadataDirective="REPLACE",
                   Metadata={"z": "9"}, ContentType="c/d")
    h = s3.head_object(Bucket=bucket, Key="dst2")
    assert h["Metadata"] == {"z": "9"} and h["ContentType"] == "c/d"
    assert s3.get_object(Bucket=bucket, Key="dst2")["Body"].read() == body
    expect_error(400, "InvalidRequest", s3.copy_object, Bucket=bucket, Key="src",
                 CopySource={"Bucket": bucket, "Key": "src"})
    s3.copy_object(Bucket=bucket, Key="src", CopySource={"Bucket": bucket, "Key": "src"},
                   MetadataDirective="REPLACE", Metadata={"new": "yes"})
    assert s3.head_object(Bucket=bucket, Key="src")["Metadata"] == {"new": "yes"}
    assert s3.get_object(Bucket=bucket, Key="src")["Body"].read() == body
    expect_error(404, "NoSuchKey", s3.copy_object, Bucket=bucket, Key="x",
                 CopySource={"Bucket": bucket, "Key": "missing"})
    other = bucket + "-2"
    s3.create_bucket(Bucket=other)
    s3.copy_object(Bucket=other, Key="cross", CopySource={"Bucket": bucket, "Key": "src"})
    assert s3.get_object(Bucket=other, Key="cross")["Body"].read() == body


def test_delete_objects(s3, bucket):
    for k in ("a", "b"):
        s3.put_object(Bucket=bucket, Key=k, Body=b"x")
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "a"}, {"Key": "b"}, {"Key": "nope"}]})
    assert sorted(d["Key"] for d in r["Deleted"]) == ["a", "b", "nope"] and not r.get("Errors")
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    s3.put_object(Bucket=bucket, Key="q", Body=b"x")
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "q"}], "Quiet": True})
    assert not r.get("Deleted") and not r.get("Errors")


def test_get_object_attributes(s3, bucket):
    body = os.urandom(1234)
    etag = s3.put_object(Bucket=bucket, Key="attr", Body=body)["ETag"]
    a = s3.get_object_attributes(Bucket=bucket, Key="attr", ObjectAttributes=["ETag", "ObjectSize", "StorageClass"])
    assert a["ObjectSize"] == 1234 and a["ETag"].strip('"') == etag.strip('"')
    expect_error(404, "NoSuchKey", s3.get_object_attributes, Bucket=bucket, Key="none", ObjectAttributes=["ETag"])


def test_presigned_get_and_put(s3, bucket):
    s3.put_object(Bucket=bucket, Key="pre", Body=b"presigned body")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "pre"}, ExpiresIn=300)
    r = requests.get(url, timeout=10)
    assert r.status_code == 200 and r.content == b"presigned body"
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "pre2"}, ExpiresIn=300)
    assert requests.put(put_url, data=b"via url", timeout=10).status_code == 200
    assert s3.get_object(Bucket=bucket, Key="pre2")["Body"].read() == b"via url"
    tampered = url.replace("pre?", "pre2?")
    r = requests.get(tampered, timeout=10)
    assert r.status_code == 403 and b"SignatureDoesNotMatch" in r.content


def test_error_body_is_s3_xml(s3, bucket):
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "missing/key"})
    r = requests.get(url, timeout=10)
    assert r.status_code == 404
    root = ET.fromstring(r.content)
    assert root.tag == "Error"
    fields = {c.tag: c.text for c in root}
    assert fields["Code"] == "NoSuchKey" and fields.get("Message")
    assert fields.get("RequestId") and fields.get("Resource") == f"/{bucket}/missing/key"
    assert r.headers.get("x-amz-request-id") == fields["RequestId"]


def test_get_keeps_streaming_the_version_it_resolved(s3, bucket):
    old = os.urandom(24 * MiB)
    s3.put_object(Bucket=bucket, Key="race", Body=old)
    g = s3.get_object(Bucket=bucket, Key="race")
    first = g["Body"].read(1024)
    done = threading.Event()

    def overwrite():
        s3.put_object(Bucket=bucket, Key="race", Body=b"new")
        s3.delete_object(Bucket=bucket, Key="race")
        done.set()
    t = threading.Thread(target=overwrite)
    t.start()
    t.join(30)
    assert done.is_set()
    rest = g["Body"].read()
    assert first + rest == old
