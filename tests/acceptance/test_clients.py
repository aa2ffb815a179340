"""The project's own real-client acceptance check: aws-cli, s3cmd and rclone, unmodified, against
`coffer-storage dev` over HTTPS. Covers SSE-S3 (bucket default and requested), SSE-C (single PUT,
multipart upload, ranged reads, wrong and missing key, key rotation by self-copy) and each client
reading back what another wrote, byte for byte."""

import base64
import hashlib
import json
import os
import re
import subprocess

import pytest

from conftest import require

BIG = 20 * 1024 * 1024  # aws s3 cp uploads this in 8 MiB parts: a 3-part multipart upload


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(cmd, env, ok=True):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if ok:
        assert r.returncode == 0, f"{' '.join(cmd[:4])}... exited {r.returncode}: {r.stderr[-2000:]}"
    return r


class Aws:
    def __init__(self, dev, env):
        self.base = ["aws", "--endpoint-url", dev.env["ENDPOINT"]]
        self.env = env

    def __call__(self, *args):
        return run(self.base + list(args), self.env).stdout

    def json(self, *args):
        return json.loads(self(*args, "--output", "json"))

    def status(self, *args):
        """The HTTP status of the last response of a failing call, read from aws-cli's debug log."""
        r = run(self.base + ["--debug"] + list(args), self.env, ok=False)
        codes = re.findall(r'HTTP/1\.1" (\d{3})', r.stderr)
        return int(codes[-1]) if codes else None


@pytest.fixture
def files(tmp_path):
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(os.urandom(100_003))
    big.write_bytes(os.urandom(BIG))
    k1, k2 = tmp_path / "k1.bin", tmp_path / "k2.bin"
    k1.write_bytes(os.urandom(32))
    k2.write_bytes(os.urandom(32))
    return dict(small=small, big=big, k1=k1, k2=k2, out=tmp_path / "out.bin")


def key_md5(path):
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def ssec(path, prefix="--sse-customer"):
    return [f"{prefix}-algorithm", "AES256", f"{prefix}-key", f"fileb://{path}"]


def test_aws_cli_sse_s3_and_sse_c(dev, client_env, files):
    require("aws")
    aws = Aws(dev, client_env)
    small, big, k1, k2, out = (files[k] for k in ("small", "big", "k1", "k2", "out"))
    aws("s3", "mb", "s3://accept-aws")

    # SSE-S3 by bucket default and requested explicitly
    assert aws.json("s3api", "put-object", "--bucket", "accept-aws", "--key", "default", "--body",
                    str(small))["ServerSideEncryption"] == "AES256"
    aws("s3", "cp", str(small), "s3://accept-aws/explicit", "--sse", "AES256", "--only-show-errors")
    assert aws.json("s3api", "head-object", "--bucket", "accept-aws", "--key",
                    "explicit")["ServerSideEncryption"] == "AES256"
    aws("s3", "cp", "s3://accept-aws/default", str(out), "--only-show-errors")
    assert sha(out) == sha(small)

    # SSE-C single PUT: echoes the key MD5, reads back only with the key
    r = aws.json("s3api", "put-object", "--bucket", "accept-aws", "--key", "ssec", "--body", str(small), *ssec(k1))
    assert r["SSECustomerKeyMD5"] == key_md5(k1)
    aws("s3api", "get-object", "--bucket", "accept-aws", "--key", "ssec", *ssec(k1), str(out))
    assert sha(out) == sha(small)
    assert aws.status("s3api", "get-object", "--bucket", "accept-aws", "--key", "ssec", str(out)) == 400
    assert aws.status("s3api", "get-object", "--bucket", "accept-aws", "--key", "ssec", *ssec(k2), str(out)) == 403

    # SSE-C multipart upload and ranged download (aws s3 cp uses HEAD + ranged GETs)
    aws("s3", "cp", str(big), "s3://accept-aws/big", "--sse-c", "AES256", "--sse-c-key", f"fileb://{k1}",
        "--only-show-errors")
    head = aws.json("s3api", "head-object", "--bucket", "accept-aws", "--key", "big", *ssec(k1))
    assert head["ContentLength"] == BIG and head["ETag"].endswith('-3"')
    aws("s3", "cp", "s3://accept-aws/big", str(out), "--sse-c", "AES256", "--sse-c-key", f"fileb://{k1}",
        "--only-show-errors")
    assert sha(out) == sha(big)
    r = aws.json("s3api", "get-object", "--bucket", "accept-aws", "--key", "big", "--range", "bytes=8388000-8389999",
                 *ssec(k1), str(out))
    assert r["ContentRange"] == f"bytes 8388000-8389999/{BIG}"
    assert out.read_bytes() == big.read_bytes()[8388000:8390000]

    # rotate the SSE-C key by self-copy: the new key reads, the old one no longer does
    aws("s3api", "copy-object", "--bucket", "accept-aws", "--key", "ssec", "--copy-source", "accept-aws/ssec",
        *ssec(k1, "--copy-source-sse-customer"), *ssec(k2))
    aws("s3api", "get-object", "--bucket", "accept-aws", "--key", "ssec", *ssec(k2), str(out))
    assert sha(out) == sha(small)
    assert aws.status("s3api", "get-object", "--bucket", "accept-aws", "--key", "ssec", *ssec(k1), str(out)) == 403


def test_s3cmd_sse_s3(dev, client_env, files, tmp_path):
    require("s3cmd")
    require("aws")
    aws = Aws(dev, client_env)
    aws("s3", "mb", "s3://accept-s3cmd")
    aws("s3api", "delete-bucket-encryption", "--bucket", "accept-s3cmd")  # so only the request asks for SSE
    host = dev.env["ENDPOINT"].split("://", 1)[1]
    s3cmd = ["s3cmd", "--config=/dev/null", f"--access_key={dev.env['ACCESS_KEY']}",
             f"--secret_key={dev.env['SECRET_KEY']}", f"--host={host}", f"--host-bucket={host}",
             "--region=us-east-1", "--ssl", f"--ca-certs={dev.env['CA_BUNDLE']}"]
    run(s3cmd + ["--server-side-encryption", "put", str(files["small"]), "s3://accept-s3cmd/obj"], client_env)
    assert aws.json("s3api", "head-object", "--bucket", "accept-s3cmd", "--key",
                    "obj")["ServerSideEncryption"] == "AES256"
    run(s3cmd + ["get", "s3://accept-s3cmd/obj", str(files["out"])], client_env)
    assert sha(files["out"]) == sha(files["small"])
    assert "s3://accept-s3cmd/obj" in run(s3cmd + ["ls", "s3://accept-s3cmd"], client_env).stdout


def test_rclone_sse_c(dev, client_env, files):
    require("rclone")
    require("aws")
    aws = Aws(dev, client_env)
    aws("s3", "mb", "s3://accept-rclone")
    k1 = files["k1"]
    env = dict(client_env, RCLONE_S3_PROVIDER="Other", RCLONE_S3_ACCESS_KEY_ID=dev.env["ACCESS_KEY"],
               RCLONE_S3_SECRET_ACCESS_KEY=dev.env["SECRET_KEY"], RCLONE_S3_ENDPOINT=dev.env["ENDPOINT"],
               RCLONE_S3_REGION="us-east-1")
    env.pop("AWS_CA_BUNDLE")  # rclone takes --ca-cert; AWS_CA_BUNDLE confuses its SDK
    sse = ["--s3-sse-customer-algorithm", "AES256",
           "--s3-sse-customer-key-base64", base64.b64encode(k1.read_bytes()).decode(),
           "--s3-sse-customer-key-md5", key_md5(k1)]
    rclone = ["rclone", "--config", "/dev/null", "--ca-cert", dev.env["CA_BUNDLE"], "--s3-no-check-bucket",
              "--retries", "1"]
    run(rclone + ["copyto", str(files["big"]), ":s3:accept-rclone/obj", "--ignore-checksum", *sse], env)
    aws("s3api", "get-object", "--bucket", "accept-rclone", "--key", "obj", *ssec(k1), str(files["out"]))
    assert sha(files["out"]) == sha(files["big"])
    assert aws.status("s3api", "get-object", "--bucket", "accept-rclone", "--key", "obj", str(files["out"])) == 400
    run(rclone + ["copyto", ":s3:accept-rclone/obj", str(files["out"]), "--ignore-checksum", *sse], env)
    assert sha(files["out"]) == sha(files["big"])


def test_aws_cli_sse_kms_on_dev_over_https(dev, client_env, files):
    """SSE-KMS as README shows it: a named key made with the KMS admin CLI of the dev deployment,
    then aws-cli over HTTPS (no allow_sse_kms_over_http): cp up (multipart) and down, the
    default key, a bucket default with a bucket key, and a self-copy to another key."""
    require("aws")
    aws = Aws(dev, client_env)
    small, big, out = files["small"], files["big"], files["out"]
    admin = [dev.env["KMS_BIN"], "admin", "--url", dev.env["KMS_URL"], "--credential",
             dev.env["KMS_ADMIN_CREDENTIAL"], "--ca-file", dev.env["CA_BUNDLE"]]
    photos = json.loads(run(admin + ["key", "create", "--alias", "alias/accept-photos"], client_env).stdout)
    archive = json.loads(run(admin + ["key", "create", "--alias", "alias/accept-archive"], client_env).stdout)
    aws("s3", "mb", "s3://accept-kms")

    aws("s3", "cp", str(big), "s3://accept-kms/big", "--sse", "aws:kms", "--sse-kms-key-id",
        "alias/accept-photos", "--only-show-errors")
    head = aws.json("s3api", "head-object", "--bucket", "accept-kms", "--key", "big")
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == photos["arn"]
    assert head["ContentLength"] == BIG and head["ETag"].endswith('-3"')
    aws("s3", "cp", "s3://accept-kms/big", str(out), "--only-show-errors")
    assert sha(out) == sha(big)

    r = aws.json("s3api", "put-object", "--bucket", "accept-kms", "--key", "default", "--body", str(small),
                 "--server-side-encryption", "aws:kms")
    assert r["ServerSideEncryption"] == "aws:kms" and r["SSEKMSKeyId"].startswith("arn:aws:kms:")

    aws("s3api", "put-bucket-encryption", "--bucket", "accept-kms", "--server-side-encryption-configuration",
        json.dumps({"Rules": [{"ApplyServerSideEncryptionByDefault": {
            "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/accept-photos"}, "BucketKeyEnabled": True}]}))
    r = aws.json("s3api", "put-object", "--bucket", "accept-kms", "--key", "by-default", "--body", str(small))
    assert r["SSEKMSKeyId"] == photos["arn"] and r["BucketKeyEnabled"] is True

    aws("s3", "cp", "s3://accept-kms/big", "s3://accept-kms/big", "--sse", "aws:kms", "--sse-kms-key-id",
        "alias/accept-archive", "--only-show-errors")
    head = aws.json("s3api", "head-object", "--bucket", "accept-kms", "--key", "big")
    assert head["SSEKMSKeyId"] == archive["arn"]
    aws("s3", "cp", "s3://accept-kms/big", str(out), "--only-show-errors")
    assert sha(out) == sha(big)
