"""Issue 14: two storage nodes on one PostgreSQL database and one S3 blob store (moto), one KMS.
An acknowledged write on either node reads back on the other at once; conditional PUTs of one key
through both nodes: exactly one wins; Completes of one upload through both nodes publish it once;
DeleteBucket on one node racing PUTs on the other leaves no ghost object."""

from __future__ import annotations

import threading
import uuid

import pytest
from botocore.exceptions import ClientError

import coffer_pg
from .harness import rand, ssec
from .test_s3_backend import Backend

pytestmark = pytest.mark.skipif(not coffer_pg.available(), reason="PostgreSQL not installed")


@pytest.fixture(scope="module")
def two_nodes(start_node, tmp_path_factory):
    backend = Backend("moto", tmp_path_factory.mktemp("multi-backend"))
    bucket = "blobs-" + uuid.uuid4().hex[:8]
    backend.client.create_bucket(Bucket=bucket)
    url = coffer_pg.fresh_database()
    nodes = [start_node(extra=(*backend.node_args(bucket, "shared"), "--database-url", url),
                        name=f"coffer-storage-{i}") for i in range(2)]
    yield nodes
    for n in nodes:
        n.stop()
    backend.stop()


def _code(e: ClientError) -> tuple[int, str]:
    return e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]


def test_read_after_write_across_nodes(two_nodes):
    a, b = (n.client() for n in two_nodes)
    bucket = "rr-" + uuid.uuid4().hex[:8]
    a.create_bucket(Bucket=bucket)
    key_c = rand(32)
    clients = [a, b]
    for i in range(12):
        writer, reader = clients[i % 2], clients[(i + 1) % 2]
        body = rand(1000 + i * 777)
        extra = ssec(key_c) if i % 3 == 0 else {}
        writer.put_object(Bucket=bucket, Key=f"k{i}", Body=body, **extra)
        assert reader.get_object(Bucket=bucket, Key=f"k{i}", **extra)["Body"].read() == body
        # An overwrite through the other node is what both read next.
        body2 = rand(500)
        reader.put_object(Bucket=bucket, Key=f"k{i}", Body=body2)
        assert writer.get_object(Bucket=bucket, Key=f"k{i}")["Body"].read() == body2
    keys_a = [o["Key"] for o in a.list_objects_v2(Bucket=bucket)["Contents"]]
    keys_b = [o["Key"] for o in b.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys_a == keys_b == sorted(f"k{i}" for i in range(12))
    b.delete_object(Bucket=bucket, Key="k0")
    with pytest.raises(ClientError) as e:
        a.head_object(Bucket=bucket, Key="k0")
    assert _code(e.value)[0] == 404


def test_create_only_puts_through_both_nodes_one_wins(two_nodes):
    a, b = (n.client() for n in two_nodes)
    bucket = "cond-" + uuid.uuid4().hex[:8]
    a.create_bucket(Bucket=bucket)
    for round_ in range(3):
        key = f"once-{round_}"
        barrier = threading.Barrier(8)
        results: list[tuple[int, str] | bytes] = []
        lock = threading.Lock()

        def put(i: int) -> None:
            c = two_nodes[i % 2].client()
            body = f"writer-{i}".encode()
            barrier.wait()
            try:
                c.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
                out: tuple[int, str] | bytes = body
            except ClientError as e:
                out = _code(e)
            with lock:
                results.append(out)

        threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        won = [r for r in results if isinstance(r, bytes)]
        lost = [r for r in results if not isinstance(r, bytes)]
        assert len(won) == 1, results
        assert all(r == (412, "PreconditionFailed") for r in lost), results
        assert a.get_object(Bucket=bucket, Key=key)["Body"].read() == won[0]
        assert b.get_object(Bucket=bucket, Key=key)["Body"].read() == won[0]


def test_completes_through_both_nodes_publish_once(two_nodes):
    a, b = (n.client() for n in two_nodes)
    bucket = "mpu-" + uuid.uuid4().hex[:8]
    a.create_bucket(Bucket=bucket)
    up = a.create_multipart_upload(Bucket=bucket, Key="big")["UploadId"]
    p1, p2 = rand(5 * 1024 * 1024), rand(1234)
    e1 = a.upload_part(Bucket=bucket, Key="big", UploadId=up, PartNumber=1, Body=p1)["ETag"]
    e2 = b.upload_part(Bucket=bucket, Key="big", UploadId=up, PartNumber=2, Body=p2)["ETag"]
    parts = {"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]}
    barrier = threading.Barrier(6)
    etags: list[str | tuple[int, str]] = []
    lock = threading.Lock()

    def complete(i: int) -> None:
        c = two_nodes[i % 2].client()
        barrier.wait()
        try:
            out: str | tuple[int, str] = c.complete_multipart_upload(
                Bucket=bucket, Key="big", UploadId=up, MultipartUpload=parts)["ETag"]
        except ClientError as e:
            out = _code(e)
        with lock:
            etags.append(out)

    threads = [threading.Thread(target=complete, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(set(etags)) == 1 and isinstance(etags[0], str), etags
    for c in (a, b):
        got = c.get_object(Bucket=bucket, Key="big")
        assert got["ETag"] == etags[0]
        assert got["Body"].read() == p1 + p2
    assert not a.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_delete_bucket_on_one_node_racing_puts_on_the_other(two_nodes):
    a = two_nodes[0].client()
    for round_ in range(3):
        bucket = f"race-{round_}-" + uuid.uuid4().hex[:8]
        a.create_bucket(Bucket=bucket)
        stop = threading.Event()
        outcomes: list[tuple[int, str]] = []
        lock = threading.Lock()

        def writer(w: int) -> None:
            c = two_nodes[1].client()
            i = 0
            while not stop.is_set():
                key = f"w{w}/{i}"
                try:
                    c.put_object(Bucket=bucket, Key=key, Body=rand(4096))
                    out = (200, "")
                    c.delete_object(Bucket=bucket, Key=key)  # keep it mostly empty
                except ClientError as e:
                    out = _code(e)
                with lock:
                    outcomes.append(out)
                i += 1

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        deleted = False
        for _ in range(2000):
            try:
                a.delete_bucket(Bucket=bucket)
                deleted = True
                break
            except ClientError as e:
                assert e.response["Error"]["Code"] == "BucketNotEmpty", e.response
        stop.set()
        for t in threads:
            t.join(60)
        assert deleted, "DeleteBucket never found the bucket empty"
        bad = [o for o in outcomes if o not in ((200, ""), (404, "NoSuchBucket"))]
        assert not bad, f"unexpected answers: {bad[:5]}"
        # Re-created through the other node: nothing of the racing writes is in it.
        b = two_nodes[1].client()
        b.create_bucket(Bucket=bucket)
        assert b.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
        assert a.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
        a.delete_bucket(Bucket=bucket)
