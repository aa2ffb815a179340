"""One process per data dir (issue 11 F23): a second ``coffer-storage serve`` on a data dir a
running node holds exits non-zero with one line naming the holder's pid, before it sweeps
anything, and the first node's in-flight multipart upload and objects are untouched."""

from __future__ import annotations

import os
import subprocess

import coffer_pg
from .conftest import ACCESS_KEY, BIN_DIR, SECRET_KEY
from .util import MiB


def test_second_serve_on_a_held_data_dir_refuses_naming_the_pid(start_node, tmp_path):
    data = tmp_path / "data"
    first = start_node(data)
    s3 = first.client()
    s3.create_bucket(Bucket="held")
    s3.put_object(Bucket="held", Key="k", Body=b"kept")
    up = s3.create_multipart_upload(Bucket="held", Key="mp")["UploadId"]
    part = os.urandom(5 * MiB)
    e1 = s3.upload_part(Bucket="held", Key="mp", UploadId=up, PartNumber=1, Body=part)["ETag"]

    env = dict(os.environ, COFFER_S3_ACCESS_KEY=ACCESS_KEY, COFFER_S3_SECRET_KEY=SECRET_KEY,
               NO_COLOR="1")
    second = subprocess.run(
        [str(BIN_DIR / "coffer-storage"), "serve", "--data-dir", str(data), "--listen",
         "127.0.0.1:0", "--default-encryption", "none", *coffer_pg.database_args(data)],
        capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
    assert second.returncode != 0, second.stdout + second.stderr
    assert "listening on" not in second.stdout
    lines = [line for line in second.stderr.splitlines() if "in use" in line]
    assert len(lines) == 1, second.stderr
    assert f"pid {first.proc.pid}" in lines[0], lines[0]
    assert str(data) in lines[0], lines[0]
    assert "Caused by" not in second.stderr, second.stderr

    # The first node's upload in flight and its objects are intact (no sweep ran).
    e2 = s3.upload_part(Bucket="held", Key="mp", UploadId=up, PartNumber=2, Body=b"tail")["ETag"]
    s3.complete_multipart_upload(Bucket="held", Key="mp", UploadId=up, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    assert s3.get_object(Bucket="held", Key="mp")["Body"].read() == part + b"tail"
    assert s3.get_object(Bucket="held", Key="k")["Body"].read() == b"kept"

    # Once the holder is gone the data dir is free again (the lock dies with the process).
    first.stop()
    again = start_node(data)
    assert again.client().get_object(Bucket="held", Key="k")["Body"].read() == b"kept"
