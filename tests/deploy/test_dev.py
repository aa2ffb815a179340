"""End-to-end test of `coffer-storage dev` as a real process tree (storage + KMS child):
SSE-S3 and SSE-C round trips over HTTPS with the generated CA, SIGTERM, restart on the same data
dir, the same objects read back; a dead KMS child makes key-dependent requests answer 503."""

import os
import signal
import tempfile
import base64
import hashlib
import time

import botocore.exceptions
import pytest

from devproc import Dev


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
