"""DeleteBucket against writes in flight (issue 11 E18): a PUT whose bucket is deleted while its
body is still arriving fails 404 NoSuchBucket and leaves nothing; a re-created bucket of the same
name is empty and can be deleted; many concurrent PUTs racing DeleteBucket never leave a ghost.
DeleteBucket with multipart uploads in progress succeeds and aborts them (as AWS)."""

from __future__ import annotations

import http.client
import os
import threading
import uuid
from urllib.parse import urlsplit

import coffer_blobstore
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from .conftest import ACCESS_KEY, REGION, SECRET_KEY
from .util import MiB, expect_error


def _code(body: bytes) -> str:
    start = body.find(b"<Code>")
    end = body.find(b"</Code>")
    return body[start + 6:end].decode() if start >= 0 and end > start else ""


class SlowPut:
    """A signed PUT that sends its headers and first bytes, then holds the rest of the body
    until released: a write in flight."""

    def __init__(self, endpoint: str, bucket: str, key: str, body: bytes):
        self.body = body
        url = f"{endpoint}/{bucket}/{key}"
        req = AWSRequest(method="PUT", url=url, data=body,
                         headers={"Content-Length": str(len(body))})
        S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", REGION).add_auth(req)
        u = urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        self.conn.putrequest("PUT", u.path, skip_accept_encoding=True)
        for k, v in req.headers.items():
            self.conn.putheader(k, v)
        self.conn.endheaders()
        self.conn.send(body[:1024])

    def finish(self) -> tuple[int, str]:
        self.conn.send(self.body[1024:])
        r = self.conn.getresponse()
        status, code = r.status, _code(r.read())
        self.conn.close()
        return status, code


def test_put_in_flight_when_its_bucket_is_deleted_leaves_nothing(node, s3):
    bucket = "race-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=bucket)
    body = os.urandom(256 * 1024)
    puts = [SlowPut(node.endpoint, bucket, f"k{i}", body) for i in range(8)]
    # No PUT has committed (their bodies are incomplete): the bucket is empty, so it goes.
    r = s3.delete_bucket(Bucket=bucket)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    results = [p.finish() for p in puts]
    assert results == [(404, "NoSuchBucket")] * len(puts), results
    expect_error(404, "NoSuchBucket", s3.list_objects_v2, Bucket=bucket)
    # A re-created bucket of the same name is empty, and can be deleted again.
    s3.create_bucket(Bucket=bucket)
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    for i in range(len(puts)):
        expect_error(404, None, s3.head_object, Bucket=bucket, Key=f"k{i}")
    assert s3.delete_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204


def test_many_puts_racing_delete_bucket_leave_no_ghost(node):
    s3 = node.client()
    for round_ in range(4):
        bucket = f"race-many-{round_}-" + uuid.uuid4().hex[:8]
        s3.create_bucket(Bucket=bucket)
        stop = threading.Event()
        outcomes: list[tuple[int, str]] = []
        lock = threading.Lock()

        def writer(w: int) -> None:
            c = node.client()
            i = 0
            while not stop.is_set():
                key = f"w{w}/{i}"
                try:
                    c.put_object(Bucket=bucket, Key=key, Body=os.urandom(64 * 1024))
                    out = (200, "")
                    # Keep the bucket empty most of the time so DeleteBucket can win.
                    c.delete_object(Bucket=bucket, Key=key)
                except ClientError as e:
                    out = (e.response["ResponseMetadata"]["HTTPStatusCode"],
                           e.response["Error"]["Code"])
                with lock:
                    outcomes.append(out)
                i += 1

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
        deleted = False
        for _ in range(2000):
            try:
                s3.delete_bucket(Bucket=bucket)
                deleted = True
                break
            except ClientError as e:
                assert e.response["Error"]["Code"] == "BucketNotEmpty", e.response
        # Writers keep going against the deleted bucket for a moment.
        for _ in range(20):
            try:
                s3.head_bucket(Bucket=bucket)
            except ClientError:
                pass
        stop.set()
        for t in threads:
            t.join(60)
        assert deleted, "DeleteBucket never found the bucket empty"
        bad = [o for o in outcomes if o not in ((200, ""), (404, "NoSuchBucket"))]
        assert not bad, f"unexpected answers: {bad[:5]}"
        s3.create_bucket(Bucket=bucket)
        listed = s3.list_objects_v2(Bucket=bucket)
        assert listed["KeyCount"] == 0, [o["Key"] for o in listed.get("Contents", [])]
        assert s3.delete_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204


def test_delete_bucket_aborts_multipart_uploads_in_progress(start_node, tmp_path):
    node = start_node(tmp_path / "data")
    s3 = node.client()
    s3.create_bucket(Bucket="mpu")
    ups = []
    for k in ("a", "b/c"):
        up = s3.create_multipart_upload(Bucket="mpu", Key=k)["UploadId"]
        s3.upload_part(Bucket="mpu", Key=k, UploadId=up, PartNumber=1, Body=os.urandom(MiB))
        ups.append((k, up))
    assert len(coffer_blobstore.blob_names(tmp_path / "data")) == 2
    r = s3.delete_bucket(Bucket="mpu")
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert coffer_blobstore.blob_names(tmp_path / "data") == set(), "the aborted uploads' parts are deleted"
    expect_error(404, "NoSuchBucket", s3.upload_part, Bucket="mpu", Key="a", UploadId=ups[0][1],
                 PartNumber=2, Body=b"late")
    s3.create_bucket(Bucket="mpu")
    assert s3.list_multipart_uploads(Bucket="mpu").get("Uploads", []) == []
    for k, up in ups:
        expect_error(404, "NoSuchUpload", s3.list_parts, Bucket="mpu", Key=k, UploadId=up)
        expect_error(404, "NoSuchUpload", s3.upload_part, Bucket="mpu", Key=k, UploadId=up,
                     PartNumber=2, Body=b"late")
    assert s3.delete_bucket(Bucket="mpu")["ResponseMetadata"]["HTTPStatusCode"] == 204
