"""Issue 11 E21: checksums verified on upload are stored and returned as AWS returns them: in
the PutObject and UploadPart answers, and on HEAD/GET of the whole object with
`x-amz-checksum-mode: ENABLED` (not without it, not for a range)."""
from __future__ import annotations

import base64
import hashlib
import os
import zlib

import pytest


def _sha256(d: bytes) -> str:
    return base64.b64encode(hashlib.sha256(d).digest()).decode()


def _crc32(d: bytes) -> str:
    return base64.b64encode(zlib.crc32(d).to_bytes(4, "big")).decode()


@pytest.mark.parametrize("alg,field,fn", [("SHA256", "ChecksumSHA256", _sha256),
                                          ("CRC32", "ChecksumCRC32", _crc32)])
def test_put_checksum_is_stored_and_returned_with_checksum_mode(s3, bucket, alg, field, fn):
    data = os.urandom(70000)
    put = s3.put_object(Bucket=bucket, Key="c", Body=data, ChecksumAlgorithm=alg)
    assert put.get(field) == fn(data), put
    head = s3.head_object(Bucket=bucket, Key="c", ChecksumMode="ENABLED")
    assert head.get(field) == fn(data), head
    got = s3.get_object(Bucket=bucket, Key="c", ChecksumMode="ENABLED")
    assert got.get(field) == fn(data)
    assert got["Body"].read() == data
    # Without the mode, or for a range, no checksum is returned.
    plain = s3.head_object(Bucket=bucket, Key="c")
    assert field not in plain, plain
    ranged = s3.get_object(Bucket=bucket, Key="c", Range="bytes=0-9", ChecksumMode="ENABLED")
    assert field not in ranged
    assert ranged["Body"].read() == data[:10]


def test_upload_part_returns_its_verified_checksum(s3, bucket):
    data = os.urandom(5 * 1024 * 1024)
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp", ChecksumAlgorithm="SHA256")
    assert up.get("ChecksumAlgorithm") == "SHA256", up
    try:
        part = s3.upload_part(Bucket=bucket, Key="mp", UploadId=up["UploadId"], PartNumber=1,
                              Body=data, ChecksumAlgorithm="SHA256")
        assert part.get("ChecksumSHA256") == _sha256(data), part
    finally:
        s3.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=up["UploadId"])


def test_get_object_attributes_returns_the_stored_checksum(s3, bucket):
    data = os.urandom(1000)
    s3.put_object(Bucket=bucket, Key="attrs", Body=data, ChecksumAlgorithm="SHA256")
    a = s3.get_object_attributes(Bucket=bucket, Key="attrs",
                                 ObjectAttributes=["Checksum", "ObjectSize"])
    assert a["Checksum"].get("ChecksumSHA256") == _sha256(data), a
    assert a["ObjectSize"] == 1000


def test_get_object_attributes_pages_object_parts(s3, bucket):
    mib = 1024 * 1024
    up = s3.create_multipart_upload(Bucket=bucket, Key="pages")
    sizes = [5 * mib, 5 * mib, 1000]
    parts = []
    for n, size in enumerate(sizes, 1):
        r = s3.upload_part(Bucket=bucket, Key="pages", UploadId=up["UploadId"], PartNumber=n,
                           Body=os.urandom(size))
        parts.append({"PartNumber": n, "ETag": r["ETag"]})
    s3.complete_multipart_upload(Bucket=bucket, Key="pages", UploadId=up["UploadId"],
                                 MultipartUpload={"Parts": parts})
    first = s3.get_object_attributes(Bucket=bucket, Key="pages", ObjectAttributes=["ObjectParts"],
                                     MaxParts=2)["ObjectParts"]
    assert first["TotalPartsCount"] == 3 and first["MaxParts"] == 2, first
    assert first["IsTruncated"] is True and first["NextPartNumberMarker"] == 2, first
    assert [(p["PartNumber"], p["Size"]) for p in first["Parts"]] == [(1, sizes[0]), (2, sizes[1])]
    rest = s3.get_object_attributes(Bucket=bucket, Key="pages", ObjectAttributes=["ObjectParts"],
                                    MaxParts=2, PartNumberMarker=2)["ObjectParts"]
    assert rest["IsTruncated"] is False and rest["PartNumberMarker"] == 2, rest
    assert [(p["PartNumber"], p["Size"]) for p in rest["Parts"]] == [(3, 1000)]


def _multipart_sha256(s3, bucket, key, parts: list[bytes]):
    up = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256")
    assert up.get("ChecksumAlgorithm") == "SHA256", up
    done = []
    for i, p in enumerate(parts):
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=i + 1,
                           Body=p, ChecksumAlgorithm="SHA256")
        assert r.get("ChecksumSHA256") == _sha256(p), r
        done.append({"PartNumber": i + 1, "ETag": r["ETag"], "ChecksumSHA256": r["ChecksumSHA256"]})
    return s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"],
                                        MultipartUpload={"Parts": done})


def test_multipart_sha256_composite_checksum_on_complete_and_head(s3, bucket):
    parts = [os.urandom(5 * 1024 * 1024), os.urandom(5 * 1024 * 1024 + 3), os.urandom(17)]
    joined = b"".join(hashlib.sha256(p).digest() for p in parts)
    want = base64.b64encode(hashlib.sha256(joined).digest()).decode() + "-3"
    done = _multipart_sha256(s3, bucket, "mp-sum", parts)
    assert done.get("ChecksumSHA256") == want, done
    head = s3.head_object(Bucket=bucket, Key="mp-sum", ChecksumMode="ENABLED")
    assert head.get("ChecksumSHA256") == want, head
    got = s3.get_object(Bucket=bucket, Key="mp-sum", ChecksumMode="ENABLED")
    assert got.get("ChecksumSHA256") == want
    assert got["Body"].read() == b"".join(parts)
    a = s3.get_object_attributes(Bucket=bucket, Key="mp-sum", ObjectAttributes=["Checksum"])
    assert a["Checksum"].get("ChecksumSHA256") == want, a


def test_multipart_without_algorithm_has_no_object_checksum(s3, bucket):
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp-none")
    assert "ChecksumAlgorithm" not in up
    r = s3.upload_part(Bucket=bucket, Key="mp-none", UploadId=up["UploadId"], PartNumber=1, Body=b"x")
    s3.complete_multipart_upload(Bucket=bucket, Key="mp-none", UploadId=up["UploadId"],
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": r["ETag"]}]})
    head = s3.head_object(Bucket=bucket, Key="mp-none", ChecksumMode="ENABLED")
    assert not any(k.startswith("Checksum") and k != "ChecksumType" for k in head), head


def test_get_object_attributes_parts_carry_their_checksums(s3, bucket):
    parts = [os.urandom(5 * 1024 * 1024), os.urandom(9)]
    _multipart_sha256(s3, bucket, "mp-parts", parts)
    got = s3.get_object_attributes(Bucket=bucket, Key="mp-parts", ObjectAttributes=["ObjectParts"],
                                   MaxParts=1, PartNumberMarker=1)["ObjectParts"]
    assert [(p["PartNumber"], p.get("ChecksumSHA256")) for p in got["Parts"]] == [(2, _sha256(parts[1]))]


def test_get_object_attributes_etag_is_unquoted(s3, bucket):
    put = s3.put_object(Bucket=bucket, Key="etag", Body=b"abc")
    assert put["ETag"] == '"%s"' % hashlib.md5(b"abc").hexdigest()
    a = s3.get_object_attributes(Bucket=bucket, Key="etag", ObjectAttributes=["ETag", "ObjectSize"])
    assert a["ETag"] == hashlib.md5(b"abc").hexdigest(), a
    assert a["ObjectSize"] == 3


@pytest.mark.parametrize("directive", ["COPY", "REPLACE"])
def test_copy_keeps_the_source_checksum(s3, bucket, directive):
    data = os.urandom(3000)
    s3.put_object(Bucket=bucket, Key="src", Body=data, ChecksumAlgorithm="SHA256")
    r = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"},
                       MetadataDirective=directive, ContentType="x/y")
    assert r["CopyObjectResult"].get("ChecksumSHA256") == _sha256(data), r
    head = s3.head_object(Bucket=bucket, Key="dst", ChecksumMode="ENABLED")
    assert head.get("ChecksumSHA256") == _sha256(data), head


def test_copy_of_a_multipart_object_carries_no_composite(s3, bucket):
    _multipart_sha256(s3, bucket, "mp-src", [os.urandom(5 * 1024 * 1024), b"tail"])
    r = s3.copy_object(Bucket=bucket, Key="mp-dst", CopySource={"Bucket": bucket, "Key": "mp-src"})
    assert "ChecksumSHA256" not in r["CopyObjectResult"], r
    head = s3.head_object(Bucket=bucket, Key="mp-dst", ChecksumMode="ENABLED")
    assert "ChecksumSHA256" not in head, head


def test_complete_with_a_wrong_part_checksum_is_invalid_part(s3, bucket):
    from .util import expect_error

    up = s3.create_multipart_upload(Bucket=bucket, Key="mp-bad", ChecksumAlgorithm="SHA256")
    r = s3.upload_part(Bucket=bucket, Key="mp-bad", UploadId=up["UploadId"], PartNumber=1,
                       Body=b"part", ChecksumAlgorithm="SHA256")
    wrong = [{"PartNumber": 1, "ETag": r["ETag"], "ChecksumSHA256": _sha256(b"other")}]
    expect_error(400, "InvalidPart", s3.complete_multipart_upload, Bucket=bucket, Key="mp-bad",
                 UploadId=up["UploadId"], MultipartUpload={"Parts": wrong})
    right = [{"PartNumber": 1, "ETag": r["ETag"], "ChecksumSHA256": r["ChecksumSHA256"]}]
    done = s3.complete_multipart_upload(Bucket=bucket, Key="mp-bad", UploadId=up["UploadId"],
                                        MultipartUpload={"Parts": right})
    assert done["ChecksumSHA256"].endswith("-1")
