"""One KMS per data dir (issue 11 F23): a second ``coffer-kms serve`` on the data dir a running
KMS holds exits non-zero with one line naming the holder's pid, before it asks for the
passphrase or touches the audit chain; the first KMS keeps issuing keys and auditing them."""

from __future__ import annotations

import os
import subprocess

import coffer_pg
from .harness import BIN_DIR, new_bucket_name

pytestmark = coffer_pg.SQLITE_ONLY  # the KMS's data dir: nothing about the storage metadata


def test_second_kms_serve_on_a_held_data_dir_refuses_naming_the_pid(kms, s3):
    env = dict(os.environ, NO_COLOR="1")
    env.pop("COFFER_KMS_PASSPHRASE", None)
    second = subprocess.run(
        [str(BIN_DIR / "coffer-kms"), "serve", "--data-dir", str(kms.data_dir), "--listen",
         "127.0.0.1:0", "--passphrase-file", str(kms.passphrase_file), "--no-mlock",
         "--insecure-http"],
        capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
    assert second.returncode != 0, second.stdout + second.stderr
    assert "listening on" not in second.stdout
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, second.stderr
    assert "in use" in lines[0] and f"pid {kms.proc.popen.pid}" in lines[0], lines[0]
    assert str(kms.data_dir) in lines[0], lines[0]

    # The first KMS still generates keys (a new SSE-S3 bucket) and audits them.
    b = new_bucket_name()
    s3.create_bucket(Bucket=b)
    s3.put_object(Bucket=b, Key="k", Body=b"after the refused second KMS")
    assert s3.get_object(Bucket=b, Key="k")["Body"].read() == b"after the refused second KMS"
