"""Buckets and listings: create/head/delete/location rules, ListObjects v1/v2 (prefix, delimiter,
max-keys, continuation, start-after, marker, KeyCount, fetch-owner) and ListObjectVersions."""

from __future__ import annotations

import uuid

from .util import expect_error

KEYS = ["a/1", "a/2", "a/b/3", "b", "c/x", "c/y/z", "d", "e+f g", "é/ü"]


def _fill(s3, bucket):
    for k in KEYS:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())


def test_bucket_rules(s3):
    name = "lb-" + uuid.uuid4().hex[:10]
    assert s3.create_bucket(Bucket=name)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.create_bucket(Bucket=name)["ResponseMetadata"]["HTTPStatusCode"] == 200
    for bad in ("ab", "UPPER", "under_score", "-lead", "a..b", "192.168.1.1", "x" * 64):
        expect_error(400, "InvalidBucketName", s3.create_bucket, Bucket=bad)
    s3.head_bucket(Bucket=name)
    assert s3.get_bucket_location(Bucket=name).get("LocationConstraint") in (None, "")
    assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.put_object(Bucket=name, Key="k", Body=b"1")
    expect_error(409, "BucketNotEmpty", s3.delete_bucket, Bucket=name)
    s3.delete_object(Bucket=name, Key="k")
    s3.create_multipart_upload(Bucket=name, Key="m")
    # An upload in progress does not keep the bucket: it is aborted with it (as AWS, issue 11 E18).
    assert s3.delete_bucket(Bucket=name)["ResponseMetadata"]["HTTPStatusCode"] == 204
    expect_error(404, None, s3.head_bucket, Bucket=name)
    expect_error(404, "NoSuchBucket", s3.delete_bucket, Bucket=name)
    expect_error(404, "NoSuchBucket", s3.get_bucket_location, Bucket=name)


def test_list_v2(s3, bucket):
    _fill(s3, bucket)
    r = s3.list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in r["Contents"]] == sorted(KEYS) and r["KeyCount"] == len(KEYS)
    assert "Owner" not in r["Contents"][0]
    assert "Owner" in s3.list_objects_v2(Bucket=bucket, FetchOwner=True)["Contents"][0]
    r = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["a/", "c/", "é/"]
    assert [o["Key"] for o in r["Contents"]] == ["b", "d", "e+f g"] and r["KeyCount"] == 6
    r = s3.list_objects_v2(Bucket=bucket, Prefix="a/", Delimiter="/")
    assert [o["Key"] for o in r["Contents"]] == ["a/1", "a/2"]
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["a/b/"]
    r = s3.list_objects_v2(Bucket=bucket, Prefix="zzz")
    assert r["KeyCount"] == 0 and "Contents" not in r or r["Contents"] == []
    r = s3.list_objects_v2(Bucket=bucket, StartAfter="c/x")
    assert [o["Key"] for o in r["Contents"]] == [k for k in sorted(KEYS) if k > "c/x"]
    # Pagination with a delimiter: prefixes are never repeated across pages.
    seen, token = [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        r = s3.list_objects_v2(Bucket=bucket, Delimiter="/", MaxKeys=2, **kw)
        assert r["KeyCount"] <= 2
        seen += [o["Key"] for o in r.get("Contents", [])] + [p["Prefix"] for p in r.get("CommonPrefixes", [])]
        if not r["IsTruncated"]:
            break
        token = r["NextContinuationToken"]
    assert sorted(seen) == ["a/", "b", "c/", "d", "e+f g", "é/"]
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 4})
    assert [o["Key"] for p in pages for o in p.get("Contents", [])] == sorted(KEYS)
    r = s3.list_objects_v2(Bucket=bucket, MaxKeys=0)
    assert r["KeyCount"] == 0 and not r["IsTruncated"] and not r.get("Contents")
    expect_error(400, "InvalidArgument", s3.list_objects_v2, Bucket=bucket, ContinuationToken="not-a-token")
    expect_error(404, "NoSuchBucket", s3.list_objects_v2, Bucket="no-such-bucket-y")


def test_list_v1_markers(s3, bucket):
    _fill(s3, bucket)
    r = s3.list_objects(Bucket=bucket, MaxKeys=3)
    assert [o["Key"] for o in r["Contents"]] == sorted(KEYS)[:3] and r["IsTruncated"]
    r2 = s3.list_objects(Bucket=bucket, Marker=r["Contents"][-1]["Key"], MaxKeys=100)
    assert [o["Key"] for o in r2["Contents"]] == sorted(KEYS)[3:] and not r2["IsTruncated"]
    r = s3.list_objects(Bucket=bucket, Delimiter="/", MaxKeys=2)
    assert r["IsTruncated"] and r["NextMarker"]
    r = s3.list_objects(Bucket=bucket, Delimiter="/", Marker=r["NextMarker"])
    assert "a/" not in [p["Prefix"] for p in r.get("CommonPrefixes", [])]
    pages = s3.get_paginator("list_objects").paginate(Bucket=bucket, PaginationConfig={"PageSize": 2})
    assert [o["Key"] for p in pages for o in p.get("Contents", [])] == sorted(KEYS)


def test_list_object_versions_unversioned(s3, bucket):
    _fill(s3, bucket)
    r = s3.list_object_versions(Bucket=bucket)
    assert [v["Key"] for v in r["Versions"]] == sorted(KEYS)
    assert all(v["VersionId"] == "null" and v["IsLatest"] for v in r["Versions"])
    r = s3.list_object_versions(Bucket=bucket, Prefix="c/", Delimiter="/")
    assert [v["Key"] for v in r["Versions"]] == ["c/x"] and [p["Prefix"] for p in r["CommonPrefixes"]] == ["c/y/"]
