"""End-to-end test of `coffer-storage dev` as a real process tree (storage + KMS child):
SSE-S3 and SSE-C round trips over HTTPS with the generated CA, SIGTERM, restart on the same data
dir, the same objects read back; a KMS child killed with SIGKILL is restarted and serves a cold
bucket; the child dies with dev (kill -9 of dev); a KMS left on the data dir by an earlier run is
replaced, anything else holding it is named in a one-line error (issue 11 F24)."""

import os
import signal
import tempfile
import base64
import hashlib
import fcntl
import subprocess
import time

import botocore.exceptions
import pytest

from devproc import BIN, Dev, gone, wait_gone


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
            # dev restarts its KMS child (with back-off) on the same address...
            line = dev.wait_line("KMS restarted")
            new_pid = int(line.split("child pid ")[1].strip(" )\n"))
            assert new_pid != dev.kms_pid and not gone(new_pid)
            assert "the KMS child process exited" in "".join(dev.err)
            # ...and keys come from it again: a cached-key-less read, and a bucket whose key
            # must be generated now.
            assert dev.s3.get_object(Bucket="bkt", Key="s3")["Body"].read() == data
            dev.s3.create_bucket(Bucket="newbkt")
            r = dev.s3.put_object(Bucket="newbkt", Key="x", Body=b"after the restart")
            assert r["ServerSideEncryption"] == "AES256"
            assert dev.s3.get_object(Bucket="newbkt", Key="x")["Body"].read() == b"after the restart"
        finally:
            dev.stop()
        assert wait_gone(new_pid), "the restarted KMS child outlived dev"


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


def test_kms_child_dies_with_dev_and_a_stale_one_is_replaced():
    with tempfile.TemporaryDirectory() as d:
        data_dir = os.path.join(d, "data")
        dev = Dev(data_dir)
        dev.s3.create_bucket(Bucket="bkt")
        dev.proc.kill()  # SIGKILL: dev cannot stop its child itself
        dev.proc.wait(timeout=30)
        assert wait_gone(dev.kms_pid), "the KMS child outlived dev killed with SIGKILL"

        # A KMS left on the deployment's data dir (as by an older dev): the next dev replaces it.
        stale = subprocess.Popen(
            [os.path.join(BIN, "coffer-kms"), "serve", "--data-dir", os.path.join(data_dir, "kms"),
             "--listen", "127.0.0.1:0", "--passphrase-file", os.path.join(data_dir, "DEV-ONLY-kms-passphrase"),
             "--tls-cert", os.path.join(data_dir, "tls", "kms.pem"), "--tls-key", os.path.join(data_dir, "tls", "kms.key"),
             "--no-mlock"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert stale.stdout.readline().startswith("listening on ")
            dev = Dev(data_dir)
            try:
                assert stale.wait(timeout=30) is not None
                assert f"replaced a stale coffer-kms (pid {stale.pid})" in "".join(dev.err)
                r = dev.s3.put_object(Bucket="bkt", Key="k", Body=b"x")
                assert r["ServerSideEncryption"] == "AES256"
            finally:
                dev.stop()
        finally:
            if stale.poll() is None:
                stale.kill()
                stale.wait()

        # Something else holding the KMS data dir is named in one line, without a backtrace.
        lock = os.path.join(data_dir, "kms", "coffer-kms.lock")
        with open(lock, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()} some-other-program\n")
            f.flush()
            out = subprocess.run(
                [os.path.join(BIN, "coffer-storage"), "dev", "--data-dir", data_dir,
                 "--s3-listen", "127.0.0.1:0", "--kms-listen", "127.0.0.1:0"],
                capture_output=True, text=True, timeout=60,
                env={k: v for k, v in os.environ.items() if k != "RUST_LOG"} | {"RUST_BACKTRACE": "1"})
        assert out.returncode != 0
        errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
        assert len(errors) == 1, out.stderr
        assert f"pid {os.getpid()}" in errors[0] and "kms" in errors[0], out.stderr
        assert "backtrace" not in out.stderr.lower() and "panicked" not in out.stderr, out.stderr
