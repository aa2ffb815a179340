"""Range reads at 64 KiB segment boundaries and multipart part boundaries; multipart uploads with
unaligned part sizes; partNumber reads; ETags."""

from __future__ import annotations

import hashlib

import pytest

from .harness import (
    KEY_A,
    KEY_B,
    MiB,
    SEG,
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

SIZES = [0, 1, SEG - 1, SEG, SEG + 1, 5 * MiB + 1]
MODES = ["sse-s3", "ssec"]


def wparams(mode, key=KEY_A):
    return {"ServerSideEncryption": "AES256"} if mode == "sse-s3" else ssec(key)


def rparams(mode, key=KEY_A):
    return {} if mode == "sse-s3" else ssec(key)


def check_enc(resp, mode, key=KEY_A, what=""):
    if mode == "sse-s3":
        assert_sse_s3(resp, what)
    else:
        assert_ssec(resp, key, what)


def ranges_for(n: int) -> list[tuple[int, int]]:
    """Inclusive (first, last) ranges around every segment boundary of an n-byte object."""
    out = {(0, 0), (0, n - 1), (n - 1, n - 1), (max(0, n - 2), n - 1)}
    b = SEG
    while b < n:
        for first, last in ((b - 1, b - 1), (b, b), (b - 1, b), (b - 10, b + 9), (b - SEG, b - 1),
                            (b, min(n - 1, b + SEG - 1)), (b - 1, min(n - 1, b + SEG))):
            if 0 <= first <= last < n:
                out.add((first, last))
        b += SEG
    if n > 3 * SEG:
        out.add((SEG - 1, 3 * SEG))  # spans 4 segments
        out.add((12345, n - 54321))  # almost everything, unaligned both ends
    return sorted(r for r in out if 0 <= r[0] <= r[1] < n)


def check_range(s3, bucket, key, data, first, last, params, mode, key_bytes=KEY_A):
    rng = f"bytes={first}-{last}"
    got, r = get_bytes(s3, bucket, key, Range=rng, **params)
    assert got == data[first : last + 1], f"{rng} of {len(data)}: wrong bytes (len {len(got)})"
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 206, rng
    assert r["ContentRange"] == f"bytes {first}-{last}/{len(data)}", rng
    assert r["ContentLength"] == last - first + 1
    check_enc(r, mode, key_bytes, rng)


@pytest.mark.parametrize("size", SIZES, ids=[str(s) for s in SIZES])
@pytest.mark.parametrize("mode", MODES)
def test_ranges_at_segment_boundaries(s3, bucket, mode, size):
    data = rand(size)
    r = s3.put_object(Bucket=bucket, Key="o", Body=data, **wparams(mode))
    check_enc(r, mode, what="PUT")
    if mode == "sse-s3":
        assert r["ETag"].strip('"') == md5hex(data)
    else:
        assert r["ETag"].strip('"') != md5hex(data)
    got, r = get_bytes(s3, bucket, "o", **rparams(mode))
    assert got == data
    assert r["ContentLength"] == size
    check_enc(r, mode, what="GET")
    h = s3.head_object(Bucket=bucket, Key="o", **rparams(mode))
    assert h["ContentLength"] == size
    for first, last in ranges_for(size):
        check_range(s3, bucket, "o", data, first, last, rparams(mode), mode)
    if size > 0:
        # suffix and open-ended ranges
        for rng, want in ((f"bytes=-{min(size, SEG + 1)}", data[-min(size, SEG + 1):]),
                          ("bytes=-1", data[-1:]),
                          (f"bytes={size // 2}-", data[size // 2:]),
                          (f"bytes=0-{size + 1000}", data)):
            got, r = get_bytes(s3, bucket, "o", Range=rng, **rparams(mode))
            assert got == want, rng
    # a range that starts at or past the end
    expect_error(416, "InvalidRange", s3.get_object, Bucket=bucket, Key="o",
                 Range=f"bytes={size}-{size + 10}", **rparams(mode))


# ------------------------------------------------------------------ multipart

PART_SIZES = [5 * MiB + 3, 5 * MiB + SEG + 1, 1234]


def upload_multipart(s3, bucket, key, parts, mode, key_bytes=KEY_A):
    r = s3.create_multipart_upload(Bucket=bucket, Key=key, **wparams(mode, key_bytes))
    check_enc(r, mode, key_bytes, "CreateMultipartUpload")
    up = r["UploadId"]
    etags = []
    for i, p in enumerate(parts, 1):
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=i, Body=p,
                           **rparams(mode, key_bytes))
        check_enc(r, mode, key_bytes, f"UploadPart {i}")
        etags.append(r["ETag"])
    r = s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=up, **rparams(mode, key_bytes),
        MultipartUpload={"Parts": [{"PartNumber": i, "ETag": e} for i, e in enumerate(etags, 1)]})
    check_enc(r, mode, key_bytes, "CompleteMultipartUpload")
    return r["ETag"], etags


def multipart_etag(parts) -> str:
    return hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + f"-{len(parts)}"


@pytest.mark.parametrize("mode", MODES)
def test_multipart_unaligned_parts(s3, bucket, mode):
    parts = [rand(n) for n in PART_SIZES]
    data = b"".join(parts)
    etag, part_etags = upload_multipart(s3, bucket, "mp", parts, mode)
    assert etag.strip('"').endswith(f"-{len(parts)}"), etag
    if mode == "sse-s3":
        assert etag.strip('"') == multipart_etag(parts)
        assert [e.strip('"') for e in part_etags] == [md5hex(p) for p in parts]
    got, r = get_bytes(s3, bucket, "mp", **rparams(mode))
    assert got == data
    assert r["ETag"] == etag
    check_enc(r, mode, what="GET multipart")
    h = s3.head_object(Bucket=bucket, Key="mp", **rparams(mode))
    assert h["ContentLength"] == len(data) and h["ETag"] == etag
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert [(o["Key"], o["ETag"], o["Size"]) for o in listed] == [("mp", etag, len(data))]

    # partNumber reads
    off = 0
    for i, p in enumerate(parts, 1):
        got, r = get_bytes(s3, bucket, "mp", PartNumber=i, **rparams(mode))
        assert got == p, f"part {i}"
        assert r["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert r["ContentRange"] == f"bytes {off}-{off + len(p) - 1}/{len(data)}"
        assert r.get("PartsCount") == len(parts)
        check_enc(r, mode, what=f"GET partNumber={i}")
        off += len(p)
    h = s3.head_object(Bucket=bucket, Key="mp", PartNumber=2, **rparams(mode))
    assert h["ContentLength"] == len(parts[1])
    expect_error(400, "InvalidPart", s3.get_object, Bucket=bucket, Key="mp", PartNumber=4, **rparams(mode))

    # ranges across part and segment boundaries
    p1, p2 = len(parts[0]), len(parts[1])
    ranges = [
        (p1 - 1, p1), (p1 - 10, p1 + 9), (p1, p1), (p1 - 1, p1 - 1),
        (p1 - 5, p1 + p2 + 5),  # crosses both part boundaries
        (p1 + p2 - 1, p1 + p2), (p1 + p2, len(data) - 1),
        (p1 + SEG - 3, p1 + SEG + 3),  # segment boundary inside part 2
        (p1 - SEG - 1, p1 + SEG + 1),  # segment boundaries on both sides of the part boundary
        (5 * MiB - 1, 5 * MiB + 1),  # segment boundary right before the end of part 1
        (0, len(data) - 1),
    ]
    for first, last in ranges:
        check_range(s3, bucket, "mp", data, first, last, rparams(mode), mode)


def test_multipart_plain_etag(plain_s3, plain_bucket):
    parts = [rand(5 * MiB), rand(1)]
    etag, part_etags = upload_multipart_plain(plain_s3, plain_bucket, "mp", parts)
    assert etag.strip('"') == multipart_etag(parts)


def upload_multipart_plain(s3, b, key, parts):
    up = s3.create_multipart_upload(Bucket=b, Key=key)["UploadId"]
    etags = [s3.upload_part(Bucket=b, Key=key, UploadId=up, PartNumber=i, Body=p)["ETag"]
             for i, p in enumerate(parts, 1)]
    r = s3.complete_multipart_upload(Bucket=b, Key=key, UploadId=up, MultipartUpload={
        "Parts": [{"PartNumber": i, "ETag": e} for i, e in enumerate(etags, 1)]})
    return r["ETag"], etags


def test_upload_part_copy_ranges_between_encryptions(s3, bucket):
    """UploadPartCopy with ranges from an SSE-S3 and an SSE-C (key A) source into an SSE-C (key B)
    upload; byte-exact result."""
    a = rand(5 * MiB + 100)
    c = rand(3 * SEG + 5)
    s3.put_object(Bucket=bucket, Key="src-s3", Body=a, ServerSideEncryption="AES256")
    s3.put_object(Bucket=bucket, Key="src-c", Body=c, **ssec(KEY_A))
    up = s3.create_multipart_upload(Bucket=bucket, Key="dst", **ssec(KEY_B))["UploadId"]
    r1 = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=up, PartNumber=1,
                             CopySource={"Bucket": bucket, "Key": "src-s3"},
                             CopySourceRange=f"bytes=7-{5 * MiB + 9}", **ssec(KEY_B))
    assert_ssec(r1, KEY_B, "UploadPartCopy from SSE-S3")
    r2 = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=up, PartNumber=2,
                             CopySource={"Bucket": bucket, "Key": "src-c"},
                             CopySourceRange=f"bytes={SEG - 1}-{2 * SEG}", **ssec(KEY_B), **ssec_src(KEY_A))
    assert_ssec(r2, KEY_B, "UploadPartCopy from SSE-C")
    r = s3.complete_multipart_upload(Bucket=bucket, Key="dst", UploadId=up, **ssec(KEY_B), MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": r1["CopyPartResult"]["ETag"]},
                  {"PartNumber": 2, "ETag": r2["CopyPartResult"]["ETag"]}]})
    want = a[7 : 5 * MiB + 10] + c[SEG - 1 : 2 * SEG + 1]
    got, r = get_bytes(s3, bucket, "dst", **ssec(KEY_B))
    assert got == want
    got, _ = get_bytes(s3, bucket, "dst", PartNumber=2, **ssec(KEY_B))
    assert got == c[SEG - 1 : 2 * SEG + 1]
    assert headers_of(r).get("x-amz-server-side-encryption-customer-key-md5")


def test_ssec_etag_stable(s3, bucket):
    data = rand(100_000)
    etag = s3.put_object(Bucket=bucket, Key="o", Body=data, **ssec(KEY_A))["ETag"]
    assert etag.strip('"') != md5hex(data)
    assert s3.get_object(Bucket=bucket, Key="o", **ssec(KEY_A))["ETag"] == etag
    assert s3.head_object(Bucket=bucket, Key="o", **ssec(KEY_A))["ETag"] == etag
    assert s3.list_objects_v2(Bucket=bucket)["Contents"][0]["ETag"] == etag
    assert s3.list_objects(Bucket=bucket)["Contents"][0]["ETag"] == etag
    attrs = s3.get_object_attributes(Bucket=bucket, Key="o", ObjectAttributes=["ETag"], **ssec(KEY_A))
    assert attrs["ETag"].strip('"') == etag.strip('"')
    # a second PUT of the same bytes and key is a new object: ETag need not match, but must not be the MD5
    etag2 = s3.put_object(Bucket=bucket, Key="o2", Body=data, **ssec(KEY_A))["ETag"]
    assert etag2.strip('"') != md5hex(data)


def test_plain_and_sse_s3_etag_is_md5(plain_s3, plain_bucket):
    data = rand(77_777)
    for key, extra in (("plain", {}), ("s3", {"ServerSideEncryption": "AES256"})):
        r = plain_s3.put_object(Bucket=plain_bucket, Key=key, Body=data, **extra)
        assert r["ETag"] == f'"{md5hex(data)}"', key
        assert plain_s3.head_object(Bucket=plain_bucket, Key=key)["ETag"] == r["ETag"]
        r = plain_s3.copy_object(Bucket=plain_bucket, Key=key + "-copy",
                                 CopySource={"Bucket": plain_bucket, "Key": key}, **extra)
        assert r["CopyObjectResult"]["ETag"] == f'"{md5hex(data)}"'
