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


def test_ctrl_c_stops_cleanly_without_error_and_logs_have_no_colour():
    """Ctrl-C in a terminal sends SIGINT to the whole foreground process group. dev stops its
    KMS child itself, so neither process logs an ERROR, and stderr (a pipe here, like a log
    file) carries no ANSI colour codes."""
    with tempfile.TemporaryDirectory() as d:
        dev = Dev(os.path.join(d, "data"), new_session=True)
        dev.s3.create_bucket(Bucket="bkt")
        dev.s3.put_object(Bucket="bkt", Key="k", Body=b"x")
        os.killpg(dev.proc.pid, signal.SIGINT)
        assert dev.proc.wait(timeout=30) == 0
        dev.err_reader.join(timeout=30)  # EOF once dev and its child have both exited
        err = "".join(dev.err)
        assert " ERROR " not in err and "ERROR" not in err.replace("ERROR_", ""), err[-3000:]
        assert "\x1b[" not in err, "colour codes in a log that is not a terminal"
        with pytest.raises(ProcessLookupError):
            os.kill(dev.kms_pid, 0)
