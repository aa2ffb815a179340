"""One `coffer-storage dev` per data dir (issue 11 F23): a second dev on a data dir a running
dev holds exits non-zero with one line naming the holder's pid, before it starts a KMS child or
sweeps anything; the first keeps serving."""

import os
import subprocess
import tempfile

from devproc import BIN, Dev


def test_second_dev_on_a_held_data_dir_refuses_naming_the_pid():
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "data")
        dev = Dev(data)
        try:
            dev.s3.create_bucket(Bucket="held")
            dev.s3.put_object(Bucket="held", Key="k", Body=b"kept")
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            env["NO_COLOR"] = "1"
            second = subprocess.run(
                [os.path.join(BIN, "coffer-storage"), "dev", "--data-dir", data,
                 "--s3-listen", "127.0.0.1:0", "--kms-listen", "127.0.0.1:0"],
                capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
            assert second.returncode != 0, second.stdout + second.stderr
            assert "ready" not in second.stdout
            lines = [line for line in second.stderr.splitlines() if line.strip()]
            assert len(lines) == 1, second.stderr
            assert "in use" in lines[0] and f"pid {dev.proc.pid}" in lines[0], lines[0]
            assert dev.s3.get_object(Bucket="held", Key="k")["Body"].read() == b"kept"
        finally:
            dev.stop()
