"""Real command-line clients against a running node over HTTP: aws-cli (multipart cp up and down,
ls, rm), s3cmd (put, get, ls) and rclone (copy, check)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

from .harness import ACCESS_KEY, SECRET_KEY, create_bucket


def clean_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE=str(tmp_path / "aws-config"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws-creds"))
    (tmp_path / "aws-config").write_text("")
    (tmp_path / "aws-creds").write_text("")
    return env


def run(cmd, env):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"{cmd[0]} failed ({r.returncode}): {r.stderr[-1500:]}"
    return r.stdout


def sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_aws_cli_multipart_cp_ls_rm(node, s3, tmp_path):
    if not shutil.which("aws"):
        pytest.skip("aws-cli not installed")
    env = clean_env(tmp_path)
    b = create_bucket(s3)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(20 * 1024 * 1024))
    aws = ["aws", "--endpoint-url", node.url, "s3"]
    run(aws + ["cp", str(big), f"s3://{b}/dir/big.bin", "--only-show-errors"], env)
    head = s3.head_object(Bucket=b, Key="dir/big.bin")
    assert head["ContentLength"] == big.stat().st_size and head["ETag"].endswith('-3"')
    out = tmp_path / "out.bin"
    run(aws + ["cp", f"s3://{b}/dir/big.bin", str(out), "--only-show-errors"], env)
    assert sha(out) == sha(big)
    listing = run(aws + ["ls", f"s3://{b}/dir/"], env)
    assert "big.bin" in listing and str(big.stat().st_size) in listing
    run(aws + ["rm", f"s3://{b}/dir/big.bin", "--only-show-errors"], env)
    assert s3.list_objects_v2(Bucket=b)["KeyCount"] == 0


def test_s3cmd_put_get_ls(node, s3, tmp_path):
    if not shutil.which("s3cmd"):
        pytest.skip("s3cmd not installed")
    env = clean_env(tmp_path)
    b = create_bucket(s3)
    host = node.url.split("://", 1)[1]
    base = ["s3cmd", "--config=/dev/null", f"--access_key={ACCESS_KEY}", f"--secret_key={SECRET_KEY}",
            f"--host={host}", f"--host-bucket={host}", "--region=us-east-1", "--no-ssl"]
    f = tmp_path / "f.bin"
    f.write_bytes(os.urandom(300_003))
    run(base + ["put", str(f), f"s3://{b}/s3cmd.bin"], env)
    out = tmp_path / "g.bin"
    run(base + ["get", f"s3://{b}/s3cmd.bin", str(out)], env)
    assert sha(out) == sha(f)
    assert f"s3://{b}/s3cmd.bin" in run(base + ["ls", f"s3://{b}"], env)


def test_rclone_copy_check(node, s3, tmp_path):
    if not shutil.which("rclone"):
        pytest.skip("rclone not installed")
    env = clean_env(tmp_path)
    env.update(RCLONE_S3_PROVIDER="Other", RCLONE_S3_ACCESS_KEY_ID=ACCESS_KEY, RCLONE_S3_SECRET_ACCESS_KEY=SECRET_KEY,
               RCLONE_S3_ENDPOINT=node.url, RCLONE_S3_REGION="us-east-1")
    b = create_bucket(s3)
    src = tmp_path / "src"
    src.mkdir()
    for i, n in enumerate([0, 1, 65536, 1_000_003]):
        (src / f"file{i}.bin").write_bytes(os.urandom(n))
    run(["rclone", "--config", "/dev/null", "copy", str(src), f":s3:{b}/tree", "--s3-no-check-bucket"], env)
    run(["rclone", "--config", "/dev/null", "check", str(src), f":s3:{b}/tree"], env)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=b)["Contents"])
    assert keys == [f"tree/file{i}.bin" for i in range(4)]
