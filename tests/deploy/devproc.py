"""`coffer-storage dev` as a real process tree, for the deploy tests: start, read dev.env, a boto3
client over HTTPS with the generated CA, SIGTERM."""

import os
import re
import signal
import subprocess
import threading
import time

import boto3
import botocore.config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("COFFER_BIN_DIR", os.path.join(ROOT, "target", "debug"))


class Dev:
    def __init__(self, data_dir, new_session=False):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "coffer-storage"), "dev", "--data-dir", data_dir,
             "--s3-listen", "127.0.0.1:0", "--kms-listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=new_session)
        self.lines = []
        self.err = []
        self.err_reader = threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True)
        self.err_reader.start()
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

    def wait_line(self, prefix, timeout=60):
        """The first stdout line starting with ``prefix`` (dev's stdout is read by a thread)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.startswith(prefix):
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {prefix!r} line from dev:\n" + "".join(self.lines + self.err))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0, "".join(self.err)


def gone(pid):
    """True once process ``pid`` has exited (no such process, or a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(pid, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.05)
    return False
