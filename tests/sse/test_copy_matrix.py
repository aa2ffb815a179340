"""CopyObject across {plain, SSE-S3, SSE-C key A, SSE-C key B} x the same (16 combinations), SSE-C
key rotation by self-copy, and the SSE response headers of every write/read operation."""

from __future__ import annotations

import pytest

from .harness import (
    KEY_A,
    KEY_B,
    SEG,
    SSE_HDR,
    assert_plain,
    assert_sse_s3,
    assert_ssec,
    expect_error,
    get_bytes,
    headers_of,
    md5hex,
    rand,
    ssec,
    ssec_src,
)

MODES = ["plain", "sse-s3", "ssec-a", "ssec-b"]
KEYS = {"ssec-a": KEY_A, "ssec-b": KEY_B}


def write_params(mode):
    if mode == "plain":
        return {}
    if mode == "sse-s3":
        return {"ServerSideEncryption": "AES256"}
    return ssec(KEYS[mode])


def read_params(mode):
    return ssec(KEYS[mode]) if mode in KEYS else {}


def source_params(mode):
    return ssec_src(KEYS[mode]) if mode in KEYS else {}


def check_mode(resp, mode, what):
    if mode == "plain":
        assert_plain(resp, what)
    elif mode == "sse-s3":
        assert_sse_s3(resp, what)
    else:
        assert_ssec(resp, KEYS[mode], what)


@pytest.mark.parametrize("dst", MODES)
@pytest.mark.parametrize("src", MODES)
def test_copy_matrix(plain_s3, plain_bucket, src, dst):
    s3, b = plain_s3, plain_bucket
    data = rand(2 * SEG + 12345)  # three segments, last one partial
    r = s3.put_object(Bucket=b, Key="src", Body=data, **write_params(src))
    check_mode(r, src, f"PUT {src}")
    src_etag = r["ETag"]

    r = s3.copy_object(Bucket=b, Key="dst", CopySource={"Bucket": b, "Key": "src"},
                       **source_params(src), **write_params(dst))
    check_mode(r, dst, f"COPY {src}->{dst}")
    copy_etag = r["CopyObjectResult"]["ETag"]

    got, r = get_bytes(s3, b, "dst", **read_params(dst))
    assert got == data, f"{src}->{dst}: bytes differ"
    check_mode(r, dst, f"GET dst ({dst})")
    assert r["ETag"] == copy_etag
    h = s3.head_object(Bucket=b, Key="dst", **read_params(dst))
    check_mode(h, dst, f"HEAD dst ({dst})")
    assert h["ContentLength"] == len(data)
    assert h["ETag"] == copy_etag

    if dst in ("plain", "sse-s3"):
        assert copy_etag.strip('"') == md5hex(data), "plaintext/SSE-S3 copy ETag is the hex MD5"
    else:
        assert copy_etag.strip('"') != md5hex(data), "SSE-C ETag must not be the plaintext MD5"
        # the destination needs its own key, not the source's
        other = KEY_B if dst == "ssec-a" else KEY_A
        expect_error(403, "AccessDenied", s3.get_object, Bucket=b, Key="dst", **ssec(other))
        expect_error(400, "InvalidRequest", s3.get_object, Bucket=b, Key="dst")
    if dst != "plain" and src == "plain":
        assert src_etag.strip('"') == md5hex(data)

    # the source is untouched
    got, r = get_bytes(s3, b, "src", **read_params(src))
    assert got == data
    check_mode(r, src, f"GET src ({src}) after copy")

    # a ranged read across a segment boundary of the copy
    got, r = get_bytes(s3, b, "dst", Range=f"bytes={SEG - 5}-{SEG + 4}", **read_params(dst))
    assert got == data[SEG - 5 : SEG + 5]


# ------------------------------------------------------------------ SSE-C key rotation


def test_ssec_rotation_by_self_copy(s3, bucket):
    data = rand(3 * SEG + 7)
    r = s3.put_object(Bucket=bucket, Key="o", Body=data, **ssec(KEY_A), Metadata={"m": "v"})
    etag = r["ETag"]
    r = s3.copy_object(Bucket=bucket, Key="o", CopySource={"Bucket": bucket, "Key": "o"},
                       **ssec_src(KEY_A), **ssec(KEY_B))
    assert_ssec(r, KEY_B, "rotation copy")
    assert r["CopyObjectResult"]["ETag"] == etag, "rotation must keep the ETag"
    expect_error(403, "AccessDenied", s3.get_object, Bucket=bucket, Key="o", **ssec(KEY_A))
    expect_error(403, None, s3.head_object, Bucket=bucket, Key="o", **ssec(KEY_A))
    got, r = get_bytes(s3, bucket, "o", **ssec(KEY_B))
    assert got == data
    assert r["ETag"] == etag
    assert_ssec(r, KEY_B, "GET after rotation")
    h = s3.head_object(Bucket=bucket, Key="o", **ssec(KEY_B))
    assert h["ETag"] == etag
    assert h["Metadata"] == {"m": "v"}, "metadata is copied by default (MetadataDirective COPY)"
    listed = {o["Key"]: o for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listed["o"]["ETag"] == etag
    assert listed["o"]["Size"] == len(data)
    # the same key again with nothing changed is refused
    expect_error(400, "InvalidRequest", s3.copy_object, Bucket=bucket, Key="o",
                 CopySource={"Bucket": bucket, "Key": "o"}, **ssec_src(KEY_B), **ssec(KEY_B))
    # rotate back
    s3.copy_object(Bucket=bucket, Key="o", CopySource={"Bucket": bucket, "Key": "o"},
                   **ssec_src(KEY_B), **ssec(KEY_A))
    got, r = get_bytes(s3, bucket, "o", **ssec(KEY_A))
    assert got == data and r["ETag"] == etag


def test_ssec_rotation_multipart_object(s3, bucket):
    parts = [rand(5 * 1024 * 1024 + 3), rand(1234)]
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp", **ssec(KEY_A))["UploadId"]
    etags = []
    for i, p in enumerate(parts, 1):
        etags.append(s3.upload_part(Bucket=bucket, Key="mp", UploadId=up, PartNumber=i, Body=p,
                                    **ssec(KEY_A))["ETag"])
    r = s3.complete_multipart_upload(
        Bucket=bucket, Key="mp", UploadId=up, **ssec(KEY_A),
        MultipartUpload={"Parts": [{"PartNumber": i, "ETag": e} for i, e in enumerate(etags, 1)]})
    etag = r["ETag"]
    assert etag.strip('"').endswith("-2")
    s3.copy_object(Bucket=bucket, Key="mp", CopySource={"Bucket": bucket, "Key": "mp"},
                   **ssec_src(KEY_A), **ssec(KEY_B))
    expect_error(403, "AccessDenied", s3.get_object, Bucket=bucket, Key="mp", **ssec(KEY_A))
    got, r = get_bytes(s3, bucket, "mp", **ssec(KEY_B))
    assert got == b"".join(parts)
    assert r["ETag"] == etag
    got, r = get_bytes(s3, bucket, "mp", PartNumber=2, **ssec(KEY_B))
    assert got == parts[1]


def test_self_copy_into_ssec_never_keeps_a_plaintext_etag(s3, bucket):
    """Issue 11 B6: re-sealing an SSE-S3 (or plaintext-tagged) object under a customer key by
    self-copy must not leave the plaintext MD5 (or the MD5 of part MD5s) as its ETag, where
    listings show it to anyone without the key."""
    data = rand(SEG + 5)
    r = s3.put_object(Bucket=bucket, Key="o", Body=data, ServerSideEncryption="AES256")
    assert r["ETag"].strip('"') == md5hex(data)
    r = s3.copy_object(Bucket=bucket, Key="o", CopySource={"Bucket": bucket, "Key": "o"},
                       **ssec(KEY_A))
    assert_ssec(r, KEY_A, "SSE-S3 -> SSE-C self-copy")
    etag = r["CopyObjectResult"]["ETag"]
    assert etag.strip('"') != md5hex(data)
    listed = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listed["o"] == etag
    got, r = get_bytes(s3, bucket, "o", **ssec(KEY_A))
    assert got == data and r["ETag"] == etag

    parts = [rand(5 * 1024 * 1024 + 3), rand(1234)]
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp", ServerSideEncryption="AES256")
    up = up["UploadId"]
    etags = [s3.upload_part(Bucket=bucket, Key="mp", UploadId=up, PartNumber=i, Body=p)["ETag"]
             for i, p in enumerate(parts, 1)]
    assert [e.strip('"') for e in etags] == [md5hex(p) for p in parts]
    mp_etag = s3.complete_multipart_upload(
        Bucket=bucket, Key="mp", UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": i, "ETag": e} for i, e in enumerate(etags, 1)]},
    )["ETag"]
    r = s3.copy_object(Bucket=bucket, Key="mp", CopySource={"Bucket": bucket, "Key": "mp"},
                       **ssec(KEY_A))
    new = r["CopyObjectResult"]["ETag"]
    assert new != mp_etag and new.strip('"').endswith("-2")
    listed = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listed["mp"] == new
    got, r = get_bytes(s3, bucket, "mp", **ssec(KEY_A))
    assert got == b"".join(parts) and r["ETag"] == new
    # back to SSE-S3: the random ETag stays (no plaintext fingerprint reappears)
    r = s3.copy_object(Bucket=bucket, Key="o", CopySource={"Bucket": bucket, "Key": "o"},
                       **ssec_src(KEY_A), ServerSideEncryption="AES256")
    assert r["CopyObjectResult"]["ETag"] == etag


# ------------------------------------------------------------------ response headers


def test_sse_s3_response_headers_everywhere(plain_s3, plain_bucket):
    s3, b = plain_s3, plain_bucket
    data = rand(1000)
    assert_sse_s3(s3.put_object(Bucket=b, Key="o", Body=data, ServerSideEncryption="AES256"), "PUT")
    assert_sse_s3(s3.get_object(Bucket=b, Key="o"), "GET")
    assert_sse_s3(s3.get_object(Bucket=b, Key="o", Range="bytes=1-5"), "GET range")
    assert_sse_s3(s3.head_object(Bucket=b, Key="o"), "HEAD")
    assert_sse_s3(s3.copy_object(Bucket=b, Key="c", CopySource={"Bucket": b, "Key": "o"},
                                 ServerSideEncryption="AES256"), "COPY")
    r = s3.create_multipart_upload(Bucket=b, Key="mp", ServerSideEncryption="AES256")
    assert_sse_s3(r, "CreateMultipartUpload")
    up = r["UploadId"]
    big = rand(5 * 1024 * 1024)  # parts before the last: >= 5 MiB
    r = s3.upload_part(Bucket=b, Key="mp", UploadId=up, PartNumber=1, Body=big)
    assert_sse_s3(r, "UploadPart")
    r2 = s3.upload_part_copy(Bucket=b, Key="mp", UploadId=up, PartNumber=2, CopySource={"Bucket": b, "Key": "o"})
    assert_sse_s3(r2, "UploadPartCopy")
    r = s3.complete_multipart_upload(Bucket=b, Key="mp", UploadId=up, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": r["ETag"]}, {"PartNumber": 2, "ETag": r2["CopyPartResult"]["ETag"]}]})
    assert_sse_s3(r, "CompleteMultipartUpload")
    assert_sse_s3(s3.head_object(Bucket=b, Key="mp"), "HEAD multipart")
    got, r = get_bytes(s3, b, "mp", PartNumber=2)
    assert got == data
    assert_sse_s3(r, "GET partNumber")
    got, r = get_bytes(s3, b, "mp")
    assert got == big + data


def test_ssec_response_headers_everywhere(plain_s3, plain_bucket):
    s3, b = plain_s3, plain_bucket
    data = rand(1000)
    assert_ssec(s3.put_object(Bucket=b, Key="o", Body=data, **ssec(KEY_A)), KEY_A, "PUT")
    assert_ssec(s3.get_object(Bucket=b, Key="o", **ssec(KEY_A)), KEY_A, "GET")
    assert_ssec(s3.get_object(Bucket=b, Key="o", Range="bytes=1-5", **ssec(KEY_A)), KEY_A, "GET range")
    assert_ssec(s3.head_object(Bucket=b, Key="o", **ssec(KEY_A)), KEY_A, "HEAD")
    assert_ssec(s3.copy_object(Bucket=b, Key="c", CopySource={"Bucket": b, "Key": "o"},
                               **ssec_src(KEY_A), **ssec(KEY_B)), KEY_B, "COPY")
    r = s3.create_multipart_upload(Bucket=b, Key="mp", **ssec(KEY_B))
    assert_ssec(r, KEY_B, "CreateMultipartUpload")
    up = r["UploadId"]
    big = rand(5 * 1024 * 1024)  # parts before the last: >= 5 MiB
    r = s3.upload_part(Bucket=b, Key="mp", UploadId=up, PartNumber=1, Body=big, **ssec(KEY_B))
    assert_ssec(r, KEY_B, "UploadPart")
    r2 = s3.upload_part_copy(Bucket=b, Key="mp", UploadId=up, PartNumber=2, CopySource={"Bucket": b, "Key": "o"},
                             **ssec_src(KEY_A), **ssec(KEY_B))
    assert_ssec(r2, KEY_B, "UploadPartCopy")
    lp = s3.list_parts(Bucket=b, Key="mp", UploadId=up, **ssec(KEY_B))
    assert [p["PartNumber"] for p in lp["Parts"]] == [1, 2]
    assert [p["Size"] for p in lp["Parts"]] == [len(big), len(data)]
    r = s3.complete_multipart_upload(Bucket=b, Key="mp", UploadId=up, **ssec(KEY_B), MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": r["ETag"]}, {"PartNumber": 2, "ETag": r2["CopyPartResult"]["ETag"]}]})
    assert_ssec(r, KEY_B, "CompleteMultipartUpload")
    got, r = get_bytes(s3, b, "mp", **ssec(KEY_B))
    assert got == big + data
    assert_ssec(r, KEY_B, "GET multipart")
    got, r = get_bytes(s3, b, "mp", PartNumber=2, **ssec(KEY_B))
    assert got == data
    assert_ssec(r, KEY_B, "GET partNumber")
    attrs = s3.get_object_attributes(Bucket=b, Key="mp", ObjectAttributes=["ObjectSize", "ETag"], **ssec(KEY_B))
    assert attrs["ObjectSize"] == len(big) + len(data)


def test_complete_without_trio_when_no_checksum(plain_s3, plain_bucket):
    """Complete of an SSE-C upload created without a checksum algorithm needs no trio."""
    s3, b = plain_s3, plain_bucket
    up = s3.create_multipart_upload(Bucket=b, Key="mp", **ssec(KEY_A))["UploadId"]
    p = s3.upload_part(Bucket=b, Key="mp", UploadId=up, PartNumber=1, Body=b"abc", **ssec(KEY_A))
    s3.complete_multipart_upload(Bucket=b, Key="mp", UploadId=up,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p["ETag"]}]})
    got, r = get_bytes(s3, b, "mp", **ssec(KEY_A))
    assert got == b"abc"


def test_plain_object_has_no_sse_headers(plain_s3, plain_bucket):
    s3, b = plain_s3, plain_bucket
    r = s3.put_object(Bucket=b, Key="o", Body=b"abc")
    assert_plain(r, "PUT")
    assert_plain(s3.get_object(Bucket=b, Key="o"), "GET")
    assert_plain(s3.head_object(Bucket=b, Key="o"), "HEAD")
    assert SSE_HDR not in headers_of(s3.copy_object(Bucket=b, Key="c", CopySource={"Bucket": b, "Key": "o"}))
