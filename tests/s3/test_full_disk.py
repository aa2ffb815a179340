"""A full disk (issue 11 A1, A2): the storage data dir lives on a small tmpfs that single PUTs,
multipart uploads, deletes and metadata-only writes fill until both blob writes (ENOSPC) and the
metadata database ("database or disk is full") fail. Then space is freed, without a restart.

A1: every acknowledged write reads back byte-exact, before and after a restart; every
acknowledged delete is gone; nothing unacknowledged is visible; uploads acknowledged while the
disk was full take parts and complete once space is back.
A2: every refused write answered 503 ServiceUnavailable with Retry-After (never 500); `/ready`
answered 503 naming the full disk while it was full, and 200 once space was freed.

Needs root (mount); skipped with the reason otherwise."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

import coffer_pg
from .conftest import _NODES, ACCESS_KEY, REGION, SECRET_KEY, Node
from .util import MiB

pytestmark = coffer_pg.SQLITE_ONLY  # the metadata database's own full disk (meta.db on the tmpfs)

SEED = os.urandom(8)
BUCKET = "full"
BALLAST = 3 * MiB


def payload(key: str, size: int) -> bytes:
    block = hashlib.sha256(SEED + key.encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


@dataclass
class Refusal:
    op: str
    status: int
    code: str
    retry_after: str | None


@dataclass
class Run:
    """What the fill did and saw."""

    mnt: Path
    data: Path
    logs: Path
    node: Node
    acked: dict[str, int] = field(default_factory=dict)  # key -> size of its acknowledged bytes
    failed_new: set[str] = field(default_factory=set)  # PUT/Complete refused, key never acked
    deleted: set[str] = field(default_factory=set)  # acknowledged deletes
    uploads: dict[str, tuple[str, list[dict]]] = field(default_factory=dict)  # live, acked
    refusals: list[Refusal] = field(default_factory=list)
    meta_full_seen: bool = False
    ready_while_full: list[tuple[int, str]] = field(default_factory=list)
    ready_after_free: tuple[int, str] | None = None
    bodies: dict[str, bytes] = field(default_factory=dict)
    continued: dict[str, str] = field(default_factory=dict)  # upload id -> key, parts added after
    nodes: list[Node] = field(default_factory=list)
    after_free: list[Refusal] = field(default_factory=list)  # refused once space was back


def _refused(run: Run, op: str, e: ClientError) -> None:
    r = e.response
    run.refusals.append(Refusal(
        op, r["ResponseMetadata"]["HTTPStatusCode"], r.get("Error", {}).get("Code", ""),
        r["ResponseMetadata"].get("HTTPHeaders", {}).get("retry-after")))


def _close_after(request, **_kw) -> None:
    request.headers["Connection"] = "close"


def _client(node: Node):
    """No retries: each call is one request, so what was acknowledged is exactly known. Each
    request on its own connection: a refused upload is answered before its body was read, and
    the node then closes that connection (issue 11 A3 is about reusing it)."""
    c = boto3.client(
        "s3", endpoint_url=node.endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))
    c.meta.events.register("before-send.s3", _close_after)
    return c


def _ready(node: Node) -> tuple[int, str]:
    r = requests.get(node.endpoint + "/ready", timeout=30)
    return r.status_code, r.text


def _put(run: Run, s3, key: str, size: int) -> bool:
    body = payload(key, size)
    try:
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    except ClientError as e:
        _refused(run, "PutObject", e)
        run.failed_new.add(key)
        return False
    run.acked[key] = size
    run.bodies[key] = body
    return True


def _multipart(run: Run, s3, key: str, sizes: list[int]) -> bool:
    try:
        up = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    except ClientError as e:
        _refused(run, "CreateMultipartUpload", e)
        run.failed_new.add(key)
        return False
    run.uploads[up] = (key, [])
    parts = []
    for n, size in enumerate(sizes, start=1):
        try:
            etag = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=n,
                                  Body=payload(f"{key}#{n}", size))["ETag"]
        except ClientError as e:
            _refused(run, "UploadPart", e)
            run.failed_new.add(key)
            return False
        parts.append({"PartNumber": n, "ETag": etag})
        run.uploads[up] = (key, list(parts))
    try:
        s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up,
                                     MultipartUpload={"Parts": parts})
    except ClientError as e:
        _refused(run, "CompleteMultipartUpload", e)
        run.failed_new.add(key)
        return False
    del run.uploads[up]
    run.acked[key] = sum(sizes)
    run.bodies[key] = b"".join(payload(f"{key}#{n}", s) for n, s in enumerate(sizes, start=1))
    return True


def _delete(run: Run, s3, key: str) -> bool:
    try:
        s3.delete_object(Bucket=BUCKET, Key=key)
    except ClientError as e:
        _refused(run, "DeleteObject", e)
        return False
    run.acked.pop(key, None)
    run.bodies.pop(key, None)
    run.deleted.add(key)
    return True


MIN_FILL = 4096  # smallest body of the fill: writes keep consuming space until metadata fails


def _fill(run: Run) -> None:
    s3 = _client(run.node)
    rng = random.Random(7)
    size = 1 * MiB
    after_meta_full = 0
    for i in range(4000):
        kind = ("put", "put", "mpu", "delete", "create")[i % 5]
        ok = True
        if kind == "put":
            ok = _put(run, s3, f"p/{i}", size)
        elif kind == "mpu":
            ok = _multipart(run, s3, f"m/{i}", [5 * MiB, size] if size >= 512 * 1024 else [size])
        elif kind == "delete" and run.acked and size > MIN_FILL:
            # (at the smallest size deletes stop, so that freed blob space cannot keep the
            # metadata database from filling up)
            key = rng.choice(sorted(run.acked))
            if not _delete(run, s3, key):
                run.meta_full_seen = True
        elif kind == "create":
            key = f"u/{i}"
            try:
                up = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
                run.uploads[up] = (key, [])
            except ClientError as e:
                _refused(run, "CreateMultipartUpload", e)
                run.meta_full_seen = True
        if not ok:
            size = max(size // 4, MIN_FILL)
        if run.meta_full_seen:
            if after_meta_full % 20 == 0:
                run.ready_while_full.append(_ready(run.node))
            after_meta_full += 1
            if after_meta_full > 60:
                return


def _list_keys(s3) -> set[str]:
    keys: set[str] = set()
    token = None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        r = s3.list_objects_v2(Bucket=BUCKET, **kw)
        keys.update(o["Key"] for o in r.get("Contents", []))
        if not r.get("IsTruncated"):
            return keys
        token = r["NextContinuationToken"]


def _verify(run: Run, node: Node) -> None:
    s3 = _client(node)
    listed = _list_keys(s3)
    assert listed == set(run.acked), (
        f"listed but not acknowledged: {sorted(listed - set(run.acked))[:10]}; "
        f"acknowledged but not listed: {sorted(set(run.acked) - listed)[:10]}")
    for key in run.acked:
        got = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert got == run.bodies[key], f"{key}: {len(got)} bytes, acknowledged {run.acked[key]}"
    for key in (run.failed_new | run.deleted) - set(run.acked):
        with pytest.raises(ClientError) as ei:
            s3.head_object(Bucket=BUCKET, Key=key)
        assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404, key
    live = set()
    marker: dict = {}
    while True:
        r = s3.list_multipart_uploads(Bucket=BUCKET, **marker)
        live.update(u["UploadId"] for u in r.get("Uploads", []))
        if not r.get("IsTruncated"):
            break
        marker = {"KeyMarker": r["NextKeyMarker"], "UploadIdMarker": r["NextUploadIdMarker"]}
    missing = set(run.uploads) - live
    assert not missing, f"acknowledged uploads lost: {sorted(missing)[:5]}"
    for up, (key, parts) in run.uploads.items():
        got = s3.list_parts(Bucket=BUCKET, Key=key, UploadId=up).get("Parts", [])
        assert [(p["PartNumber"], p["ETag"]) for p in got] == \
            [(p["PartNumber"], p["ETag"]) for p in parts], up


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs for the data dir")
    root = tmp_path_factory.mktemp("full-disk")
    mnt = root / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    nodes: list[Node] = []
    run = None
    try:
        (mnt / "ballast").write_bytes(b"\0" * BALLAST)
        node = Node(mnt / "data", root / "logs")
        nodes.append(node)
        _NODES.append(node)
        run = Run(mnt=mnt, data=mnt / "data", logs=root / "logs", node=node, nodes=nodes)
        s3 = _client(node)
        s3.create_bucket(Bucket=BUCKET)
        _fill(run)
        # Free space without restarting: the operator removes a file, then clients delete some.
        (mnt / "ballast").unlink()
        run.ready_after_free = _ready(node)
        for key in sorted(run.acked)[:3]:
            if not _delete(run, s3, key):
                run.after_free.append(run.refusals[-1])
        for i in range(5):
            if not _put(run, s3, f"after/{i}", 64 * 1024 + i):
                run.after_free.append(run.refusals[-1])
        # Uploads acknowledged while the disk was full take parts once space is back.
        for up, (key, parts) in [u for u in run.uploads.items() if not u[1][1]][-2:]:
            try:
                etag = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=1,
                                      Body=payload(f"{key}#1", 1000))["ETag"]
            except ClientError as e:
                _refused(run, "UploadPart", e)
                run.after_free.append(run.refusals[-1])
                continue
            run.uploads[up] = (key, [{"PartNumber": 1, "ETag": etag}])
            run.continued[up] = key
        yield run
    finally:
        for n in nodes:
            n.stop()
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_loses_no_acknowledged_write(full_disk):
    run = full_disk
    assert run.meta_full_seen, "the fill never reached a metadata write refused for space"
    assert any("database or disk is full" in line or "disk full" in line.lower()
               for line in run.node.stderr(tail=100000).splitlines()), \
        "the metadata database never reported a full disk"
    assert not run.after_free, f"refused after space was freed: {run.after_free}"
    assert run.continued, "no upload acknowledged while full was left to continue"
    _verify(run, run.node)
    run.node.stop()
    node = Node(run.data, run.logs)
    run.nodes.append(node)
    _NODES.append(node)
    _verify(run, node)
    s3 = _client(node)
    for up, key in run.continued.items():
        s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up,
                                     MultipartUpload={"Parts": run.uploads[up][1]})
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == payload(f"{key}#1", 1000)


def test_full_disk_answers_503_with_retry_after_and_recovers(full_disk):
    run = full_disk
    assert run.refusals, "nothing was refused: the disk never filled"
    bad = [r for r in run.refusals
           if (r.status, r.code) != (503, "ServiceUnavailable") or not r.retry_after]
    assert not bad, f"{len(bad)} of {len(run.refusals)} refusals were not 503 + Retry-After: {bad[:5]}"
    assert run.ready_while_full, "/ready was never asked while the disk was full"
    for status, body in run.ready_while_full:
        assert status == 503 and "disk full" in body.lower(), (status, body)
    assert run.ready_after_free is not None
    assert run.ready_after_free[0] == 200, run.ready_after_free
    assert not run.after_free, f"refused after space was freed, without a restart: {run.after_free}"
