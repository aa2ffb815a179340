"""Crash safety of the plain store: kill -9 while PUTs, part uploads and completes are in flight,
restart on the same data dir, and check that every acknowledged object reads back byte-exact,
nothing partial is visible, acknowledged parts of a live upload survive, no temporary or orphan
blob file remains, and no version is left `writing` except those of live uploads."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time

import coffer_blobstore
import coffer_pg
from .util import MiB

SEED = os.urandom(8)


def payload(key: str, size: int) -> bytes:
    block = hashlib.sha256(SEED + key.encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def test_kill_9_during_writes(start_node, tmp_path):
    data = tmp_path / "data"
    node = start_node(data)
    s3 = node.client()
    s3.create_bucket(Bucket="crash")
    sizes: dict[str, int] = {}
    acked: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def putter(w: int) -> None:
        c = node.client()
        i = 0
        while not stop.is_set():
            key = f"w{w}/{i}"
            size = [1, 4096, 70_000, 1 * MiB + 3, 3 * MiB][i % 5]
            with lock:
                sizes[key] = size
            try:
                c.put_object(Bucket="crash", Key=key, Body=payload(key, size))
            except Exception:
                return
            with lock:
                acked.add(key)
            i += 1

    live = {}

    def multiparter() -> None:
        c = node.client()
        n = 0
        while not stop.is_set():
            key = f"mp/{n}"
            parts = [payload(f"{key}#{p}", 5 * MiB if p < 3 else 123) for p in range(4)]
            with lock:
                sizes[key] = sum(len(p) for p in parts)
            try:
                up = c.create_multipart_upload(Bucket="crash", Key=key)["UploadId"]
                done = []
                for p, body in enumerate(parts, start=1):
                    e = c.upload_part(Bucket="crash", Key=key, UploadId=up, PartNumber=p, Body=body)["ETag"]
                    done.append({"PartNumber": p, "ETag": e})
                    with lock:
                        live[up] = (key, list(done))
                c.complete_multipart_upload(Bucket="crash", Key=key, UploadId=up, MultipartUpload={"Parts": done})
            except Exception:
                return
            with lock:
                live.pop(up, None)
                acked.add(key)
            n += 1

    threads = [threading.Thread(target=putter, args=(w,)) for w in range(4)]
    threads += [threading.Thread(target=multiparter) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            if len(acked) >= 25 and any(live.values()):
                break
        time.sleep(0.05)
    # Kill while a body is being written (a file in tmp/), so the kill interrupts real writes.
    deadline = time.monotonic() + 5
    while not any((data / "tmp").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.001)
    node.kill9()
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) >= 10, "too few writes were acknowledged before the kill"

    node = start_node(data)
    s3 = node.client()
    for key in sorted(acked):
        body = s3.get_object(Bucket="crash", Key=key)["Body"].read()
        assert body == (b"".join(payload(f"{key}#{p}", 5 * MiB if p < 3 else 123) for p in range(4))
                        if key.startswith("mp/") else payload(key, sizes[key])), key
    listed = [o for p in s3.get_paginator("list_objects_v2").paginate(Bucket="crash") for o in p.get("Contents", [])]
    for o in listed:  # visible but unacknowledged (the answer was lost): still complete, never partial
        assert o["Key"] in sizes and o["Size"] == sizes[o["Key"]], o
    assert {o["Key"] for o in listed} >= acked

    # Acknowledged parts of an upload that was live at the kill survive and can be completed.
    uploads = {u["UploadId"]: u["Key"] for u in s3.list_multipart_uploads(Bucket="crash").get("Uploads", [])}
    for up, (key, done) in live.items():
        if up not in uploads:
            continue  # its Complete committed before the kill
        have = {p["PartNumber"] for p in s3.list_parts(Bucket="crash", Key=key, UploadId=up).get("Parts", [])}
        assert {d["PartNumber"] for d in done} <= have
        s3.abort_multipart_upload(Bucket="crash", Key=key, UploadId=up)

    node.stop()
    # The kill really interrupted writes: the restart aborted their versions.
    swept = re.search(r"start-up sweep .*interrupted_versions=(\d+) tmp=(\d+)", node.stderr(400))
    assert swept and int(swept.group(1)) + int(swept.group(2)) >= 1, node.stderr(50)
    assert list((data / "tmp").iterdir()) == []
    referenced = {r[0] for r in coffer_pg.query(data, "SELECT file FROM blobs")}
    on_disk = coffer_blobstore.blob_names(data)
    assert on_disk == referenced, (on_disk - referenced, referenced - on_disk)
    stuck = coffer_pg.query(data, "SELECT COUNT(*) FROM versions WHERE state = 'writing' AND version_id "
                            "NOT IN (SELECT version_id FROM uploads WHERE completed_etag IS NULL)")[0][0]
    assert stuck == 0
