"""Multipart uploads: unaligned parts, ETag md5-of-md5s-N, partNumber GET, UploadPartCopy with a
range, ListParts/ListMultipartUploads, and every named error of CompleteMultipartUpload."""

from __future__ import annotations

import hashlib
import os

from .util import MiB, expect_error


def _upload(s3, bucket, key, parts: list[bytes], **kw):
    up = s3.create_multipart_upload(Bucket=bucket, Key=key, **kw)["UploadId"]
    etags = [s3.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=i + 1, Body=p)["ETag"]
             for i, p in enumerate(parts)]
    return up, [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]


def test_unaligned_multipart_round_trip(s3, bucket):
    parts = [os.urandom(5 * MiB + 1), os.urandom(5 * MiB + 65_537), os.urandom(7)]
    body = b"".join(parts)
    up, done = _upload(s3, bucket, "mp", parts, ContentType="x/y", Metadata={"k": "v"})
    lp = s3.list_parts(Bucket=bucket, Key="mp", UploadId=up)
    assert [p["Size"] for p in lp["Parts"]] == [len(p) for p in parts]
    assert [p["ETag"] for p in lp["Parts"]] == [d["ETag"] for d in done]
    lp1 = s3.list_parts(Bucket=bucket, Key="mp", UploadId=up, MaxParts=1)
    assert lp1["IsTruncated"] and len(lp1["Parts"]) == 1
    lp2 = s3.list_parts(Bucket=bucket, Key="mp", UploadId=up, PartNumberMarker=lp1["NextPartNumberMarker"])
    assert [p["PartNumber"] for p in lp2["Parts"]] == [2, 3]
    assert up in [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]]
    r = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=up, MultipartUpload={"Parts": done})
    md5s = b"".join(hashlib.md5(p).digest() for p in parts)
    want = '"%s-3"' % hashlib.md5(md5s).hexdigest()
    assert r["ETag"] == want
    again = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=up, MultipartUpload={"Parts": done})
    assert again["ETag"] == want
    assert up not in [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    g = s3.get_object(Bucket=bucket, Key="mp")
    assert g["Body"].read() == body and g["ETag"] == want and g["ContentType"] == "x/y" and g["Metadata"] == {"k": "v"}
    off = 0
    for i, p in enumerate(parts, start=1):
        r = s3.get_object(Bucket=bucket, Key="mp", PartNumber=i)
        assert r["Body"].read() == p and r["PartsCount"] == 3
        assert r["ContentRange"] == f"bytes {off}-{off + len(p) - 1}/{len(body)}"
        off += len(p)
    assert s3.head_object(Bucket=bucket, Key="mp", PartNumber=2)["ContentLength"] == len(parts[1])
    # E26 (docs/s3-encryption.md, "Errors"): a part number beyond the count is 400 InvalidPart.
    expect_error(400, "InvalidPart", s3.get_object, Bucket=bucket, Key="mp", PartNumber=4)
    s = 5 * MiB - 10
    r = s3.get_object(Bucket=bucket, Key="mp", Range=f"bytes={s}-{s + 100}")
    assert r["Body"].read() == body[s:s + 101]
    a = s3.get_object_attributes(Bucket=bucket, Key="mp", ObjectAttributes=["ObjectParts", "ObjectSize"])
    assert a["ObjectSize"] == len(body) and a["ObjectParts"]["TotalPartsCount"] == 3


def test_upload_part_copy_with_range(s3, bucket):
    src = os.urandom(6 * MiB + 3)
    s3.put_object(Bucket=bucket, Key="src", Body=src)
    up = s3.create_multipart_upload(Bucket=bucket, Key="assembled")["UploadId"]
    p1 = s3.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=up, PartNumber=1,
                             CopySource={"Bucket": bucket, "Key": "src"},
                             CopySourceRange=f"bytes=1-{5 * MiB}")["CopyPartResult"]["ETag"]
    p2 = s3.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=up, PartNumber=2,
                             CopySource={"Bucket": bucket, "Key": "src"})["CopyPartResult"]["ETag"]
    p3 = s3.upload_part(Bucket=bucket, Key="assembled", UploadId=up, PartNumber=3, Body=b"tail")["ETag"]
    assert p1 == '"%s"' % hashlib.md5(src[1:5 * MiB + 1]).hexdigest()
    expect_error(416, "InvalidRange", s3.upload_part_copy, Bucket=bucket, Key="assembled", UploadId=up,
                 PartNumber=4, CopySource={"Bucket": bucket, "Key": "src"}, CopySourceRange=f"bytes=0-{len(src)}")
    s3.complete_multipart_upload(Bucket=bucket, Key="assembled", UploadId=up, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": p1}, {"PartNumber": 2, "ETag": p2}, {"PartNumber": 3, "ETag": p3}]})
    got = s3.get_object(Bucket=bucket, Key="assembled")["Body"].read()
    assert got == src[1:5 * MiB + 1] + src + b"tail"


def test_complete_errors(s3, bucket):
    big, small = os.urandom(5 * MiB), b"small"
    up, done = _upload(s3, bucket, "e", [small, big])
    expect_error(400, "EntityTooSmall", s3.complete_multipart_upload, Bucket=bucket, Key="e", UploadId=up,
                 MultipartUpload={"Parts": done})
    expect_error(400, "InvalidPartOrder", s3.complete_multipart_upload, Bucket=bucket, Key="e", UploadId=up,
                 MultipartUpload={"Parts": [done[1], done[0]]})
    expect_error(400, "InvalidPart", s3.complete_multipart_upload, Bucket=bucket, Key="e", UploadId=up,
                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"00000000000000000000000000000000"'}]})
    expect_error(400, "InvalidPart", s3.complete_multipart_upload, Bucket=bucket, Key="e", UploadId=up,
                 MultipartUpload={"Parts": [{"PartNumber": 9, "ETag": done[0]["ETag"]}]})
    expect_error(400, "MalformedXML", s3.complete_multipart_upload, Bucket=bucket, Key="e", UploadId=up,
                 MultipartUpload={"Parts": []})
    # Only the last part may be small: completing with the small part last works.
    s3.complete_multipart_upload(Bucket=bucket, Key="e", UploadId=up, MultipartUpload={"Parts": [
        {"PartNumber": 2, "ETag": done[1]["ETag"]}]})
    assert s3.get_object(Bucket=bucket, Key="e")["Body"].read() == big
    expect_error(400, "InvalidArgument", s3.upload_part, Bucket=bucket, Key="e", UploadId="x",
                 PartNumber=10001, Body=b"x")


def test_abort_and_no_such_upload(s3, bucket):
    up, _ = _upload(s3, bucket, "ab", [b"x" * 100])
    s3.abort_multipart_upload(Bucket=bucket, Key="ab", UploadId=up)
    expect_error(404, "NoSuchUpload", s3.abort_multipart_upload, Bucket=bucket, Key="ab", UploadId=up)
    expect_error(404, "NoSuchUpload", s3.upload_part, Bucket=bucket, Key="ab", UploadId=up, PartNumber=1, Body=b"y")
    expect_error(404, "NoSuchUpload", s3.list_parts, Bucket=bucket, Key="ab", UploadId=up)
    expect_error(404, "NoSuchUpload", s3.complete_multipart_upload, Bucket=bucket, Key="ab", UploadId=up,
                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"x"'}]})
    expect_error(404, "NoSuchKey", s3.get_object, Bucket=bucket, Key="ab")


def test_part_overwrite_uses_latest(s3, bucket):
    up = s3.create_multipart_upload(Bucket=bucket, Key="ow")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="ow", UploadId=up, PartNumber=1, Body=b"first")
    e = s3.upload_part(Bucket=bucket, Key="ow", UploadId=up, PartNumber=1, Body=b"second")["ETag"]
    s3.complete_multipart_upload(Bucket=bucket, Key="ow", UploadId=up,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e}]})
    assert s3.get_object(Bucket=bucket, Key="ow")["Body"].read() == b"second"


def test_list_multipart_uploads_pagination_and_prefixes(s3, bucket):
    made = []
    for key in ["a/1", "a/2", "b", "b", "c"]:
        made.append((key, s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]))
    done = s3.create_multipart_upload(Bucket=bucket, Key="done")["UploadId"]
    e = s3.upload_part(Bucket=bucket, Key="done", UploadId=done, PartNumber=1, Body=b"x")["ETag"]
    s3.complete_multipart_upload(Bucket=bucket, Key="done", UploadId=done,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e}]})
    r = s3.list_multipart_uploads(Bucket=bucket)
    full = [(u["Key"], u["UploadId"]) for u in r["Uploads"]]
    assert sorted(full) == sorted(made) and [k for k, _ in full] == sorted(k for k, _ in made)
    assert not r["IsTruncated"]
    seen, kw = [], {}
    while True:
        r = s3.list_multipart_uploads(Bucket=bucket, MaxUploads=2, **kw)
        seen += [(u["Key"], u["UploadId"]) for u in r.get("Uploads", [])]
        if not r["IsTruncated"]:
            break
        kw = {"KeyMarker": r["NextKeyMarker"], "UploadIdMarker": r["NextUploadIdMarker"]}
    assert seen == full
    r = s3.list_multipart_uploads(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["a/"]
    assert [u["Key"] for u in r["Uploads"]] == ["b", "b", "c"]
    r = s3.list_multipart_uploads(Bucket=bucket, Prefix="a/")
    assert [u["Key"] for u in r["Uploads"]] == ["a/1", "a/2"]
    r = s3.list_multipart_uploads(Bucket=bucket, KeyMarker="b")
    assert [u["Key"] for u in r["Uploads"]] == ["c"]
    for key, up in made:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=up)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
