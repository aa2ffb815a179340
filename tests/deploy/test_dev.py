"""End-to-end test of `coffer-storage dev` as a real process tree (storage + KMS child):
SSE-S3 and SSE-C round trips over HTTPS with the generated CA, SIGTERM, restart on the same data
dir, the same objects read back; a dead KMS child makes key-dependent requests answer 503."""

import os
import re
import signal
import subprocess
import tempfile
import threading
import base64
import hashlib
import time

import boto3
import botocore.config
import botocore.exceptions
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("COFFER_BIN_DIR", os.path.join(ROOT, "target", "debug"))


class Dev:
    def __init__(self, data_dir):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "coffer-storage"), "dev", "--data-dir", data_dir,
             "--s3-listen", "127.0.0.1:0", "--kms-listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines = []
        self.err = []
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True).start()
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("ready"):
                break
        else:
            raise AssertionError("dev exited before ready:\n" + "".join(self.lines + self.err))
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()
        out = "".join(self.lines)
        self.kms_pid = int(re.search(r"child pid (\d+)", out).group(1))
        env_file = os.path.join(data_dir, "dev.env")
        assert oct(os.stat(env_file).st_mode & 0o777) == "0o600"
        self.env = dict(l.split("=", 1) for l in open(env_file).read().splitlines() if "=" in l and not l.startswith("#"))
        assert self.env["ENDPOINT"].startswith("https://")
        self.s3 = boto3.client(
            "s3", endpoint_url=self.env["ENDPOINT"], aws_access_key_id=self.env["ACCESS_KEY"],
            aws_secret_access_key=self.env["SECRET_KEY"], region_name="us-east-1", verify=self.env["CA_BUNDLE"],
            config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0, "".join(self.err)


KEY = os.urandom(32)
SSEC = dict(SSECustomerAlgorithm="AES256", SSECustomerKey=KEY)


def test_dev_round_trip_restart_and_dead_kms():
    with tempfile.TemporaryDirectory() as d:
        data = os.urandom(300_001)
        dev = Dev(os.path.join(d, "data"))
        try:
            dev.s3.create_bucket(Bucket="bkt")
            r = dev.s3.put_object(Bucket="bkt", Key="s3", Body=data)
            assert r["ServerSideEncryption"] == "AES256"
            r = dev.s3.put_object(Bucket="bkt", Key="c", Body=data, **SSEC)
            assert r["SSECustomerKeyMD5"] == base64.b64encode(hashlib.md5(KEY).digest()).decode()
        finally:
            dev.stop()
        with pytest.raises(ProcessLookupError):
            os.kill(dev.kms_pid, 0)  # the KMS child stopped with its parent

        dev = Dev(os.path.join(d, "data"))
        try:
            assert dev.s3.get_object(Bucket="bkt", Key="s3")["Body"].read() == data
            assert dev.s3.get_object(Bucket="bkt", Key="c", **SSEC)["Body"].read() == data
            os.kill(dev.kms_pid, signal.SIGKILL)
            # the node notices the dead child and stops serving key-dependent requests
            for _ in range(100):
                try:
                    dev.s3.get_object(Bucket="bkt", Key="s3")["Body"].read()
                except botocore.exceptions.ClientError as e:
                    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 503
                    assert e.response["Error"]["Code"] == "ServiceUnavailable"
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("reads kept working after the KMS child died")
            dev.s3.create_bucket(Bucket="newbkt")
            with pytest.raises(botocore.exceptions.ClientError) as e:
                dev.s3.put_object(Bucket="newbkt", Key="x", Body=b"never plaintext")
            assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            assert dev.s3.list_objects_v2(Bucket="newbkt").get("KeyCount") == 0
        finally:
            dev.stop()
