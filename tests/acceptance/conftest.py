"""Fixtures of the real-client acceptance check: one `coffer-storage dev` deployment (storage node
plus KMS child, HTTPS with the generated CA) per module, and an environment for the command-line
clients that keeps them away from the user's own AWS, s3cmd and rclone configuration."""

import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy"))
from devproc import Dev  # noqa: E402


def require(tool):
    """A missing client fails the run when the test command installed the clients (it sets
    COFFER_REQUIRE_CLIENTS=1); a developer running pytest by hand gets a skip instead."""
    if shutil.which(tool):
        return
    if os.environ.get("COFFER_REQUIRE_CLIENTS") == "1":
        pytest.fail(f"{tool} is not installed; scripts/setup installs it")
    pytest.skip(f"{tool} is not installed (scripts/setup installs it)")


@pytest.fixture(scope="module")
def dev():
    d = tempfile.mkdtemp(prefix="coffer-accept-")
    deployment = Dev(os.path.join(d, "data"))
    try:
        yield deployment
    finally:
        deployment.stop()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def client_env(dev, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_", "S3CMD"))}
    (tmp_path / "aws-config").write_text("")
    (tmp_path / "aws-creds").write_text("")
    env.update(AWS_ACCESS_KEY_ID=dev.env["ACCESS_KEY"], AWS_SECRET_ACCESS_KEY=dev.env["SECRET_KEY"],
               AWS_DEFAULT_REGION="us-east-1", AWS_CA_BUNDLE=dev.env["CA_BUNDLE"], AWS_PAGER="",
               AWS_CONFIG_FILE=str(tmp_path / "aws-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws-creds"), HOME=str(tmp_path))
    return env
