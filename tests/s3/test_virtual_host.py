"""Virtual-hosted-style addressing (`bucket.DOMAIN`) when the node is started with `--domain`.
boto3 talks to `http://s3.coffer.test` through the node itself as an HTTP proxy, so the
bucket name travels in the Host header without any DNS set-up."""

from __future__ import annotations

import boto3
from botocore.config import Config

from .conftest import ACCESS_KEY, REGION, SECRET_KEY


def test_virtual_host_style(start_node, tmp_path):
    node = start_node(tmp_path / "data", ["--domain", "s3.coffer.test"])
    vh = boto3.client("s3", endpoint_url="http://s3.coffer.test", region_name=REGION,
                      aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                      config=Config(s3={"addressing_style": "virtual"}, retries={"max_attempts": 1},
                                    proxies={"http": node.endpoint}))
    vh.create_bucket(Bucket="vhost")
    vh.put_object(Bucket="vhost", Key="dir/k", Body=b"virtual")
    assert vh.get_object(Bucket="vhost", Key="dir/k")["Body"].read() == b"virtual"
    assert [o["Key"] for o in vh.list_objects_v2(Bucket="vhost")["Contents"]] == ["dir/k"]
    # Path style keeps working on the same node.
    assert node.client().get_object(Bucket="vhost", Key="dir/k")["Body"].read() == b"virtual"
