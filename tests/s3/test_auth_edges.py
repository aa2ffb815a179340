"""Authentication that cannot be replayed and body limits on received bytes (issue 11 C8, C9,
C10, D14): SigV2 in the header or the query is refused as AWS refuses it in SigV4-only regions,
presigned SigV4 URLs carry 1 <= X-Amz-Expires <= 604800 and expire with 403, a credential scope
naming another region is refused before anything is written, and max_body_bytes bounds the bytes
a plain PUT sends whatever x-amz-decoded-content-length says."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import urllib.parse
import uuid
import xml.etree.ElementTree as ET

import requests
from botocore.auth import HmacV1Auth, HmacV1QueryAuth, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from .conftest import ACCESS_KEY, REGION, SECRET_KEY
from .util import MiB, expect_error

SIGV2_MESSAGE = ("The authorization mechanism you have provided is not supported. "
                 "Please use AWS4-HMAC-SHA256.")


def _error_field(r: requests.Response, name: str) -> str | None:
    try:
        return ET.fromstring(r.content).findtext(name)
    except ET.ParseError:
        return None


def code_of(r: requests.Response) -> str | None:
    return _error_field(r, "Code")


def message_of(r: requests.Response) -> str:
    return _error_field(r, "Message") or ""


def listed(s3, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def presign_v4(method: str, endpoint: str, path: str, *, region: str = REGION,
               when: dt.datetime | None = None, expires: str = "600",
               secret: str = SECRET_KEY) -> str:
    """A presigned SigV4 URL with any date, region and X-Amz-Expires (botocore fixes them)."""
    when = when or dt.datetime.now(dt.timezone.utc)
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    host = urllib.parse.urlsplit(endpoint).netloc
    scope = f"{day}/{region}/s3/aws4_request"
    q = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{ACCESS_KEY}/{scope}",
        "X-Amz-Date": amz_date,
        "X-Amz-Expires": expires,
        "X-Amz-SignedHeaders": "host",
    }
    enc = lambda s: urllib.parse.quote(s, safe="-_.~")  # noqa: E731
    canonical_q = "&".join(f"{enc(k)}={enc(v)}" for k, v in sorted(q.items()))
    canonical = "\n".join([method, urllib.parse.quote(path, safe="/-_.~"), canonical_q,
                           f"host:{host}\n", "host", "UNSIGNED-PAYLOAD"])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (day, region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{endpoint}{path}?{canonical_q}&X-Amz-Signature={sig}"


# ---------------------------------------------------------------- C8: SigV2


def test_sigv2_header_is_refused_and_writes_nothing(node, s3, bucket):
    url = f"{node.endpoint}/{bucket}/v2-header"
    req = AWSRequest(method="PUT", url=url, data=b"replayable body",
                     headers={"Date": dt.datetime.now(dt.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")})
    HmacV1Auth(Credentials(ACCESS_KEY, SECRET_KEY)).add_auth(req)
    assert req.headers["Authorization"].startswith("AWS ")
    r = requests.put(url, data=b"replayable body", headers=dict(req.headers), timeout=30)
    assert r.status_code == 400, r.text
    assert code_of(r) == "InvalidRequest" and message_of(r) == SIGV2_MESSAGE, r.text
    assert "v2-header" not in listed(s3, bucket)
    # a GET signed with SigV2 is refused too
    s3.put_object(Bucket=bucket, Key="o", Body=b"x")
    req = AWSRequest(method="GET", url=f"{node.endpoint}/{bucket}/o",
                     headers={"Date": dt.datetime.now(dt.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")})
    HmacV1Auth(Credentials(ACCESS_KEY, SECRET_KEY)).add_auth(req)
    r = requests.get(req.url, headers=dict(req.headers), timeout=30)
    assert r.status_code == 400 and code_of(r) == "InvalidRequest", r.text


def test_sigv2_query_is_refused(node, s3, bucket):
    s3.put_object(Bucket=bucket, Key="o", Body=b"secret bytes")
    for method in ("GET", "PUT"):
        req = AWSRequest(method=method, url=f"{node.endpoint}/{bucket}/o", data=b"new body")
        HmacV1QueryAuth(Credentials(ACCESS_KEY, SECRET_KEY), expires=3600).add_auth(req)
        assert "AWSAccessKeyId=" in req.url and "Signature=" in req.url
        r = requests.request(method, req.url, data=b"new body" if method == "PUT" else None, timeout=30)
        assert r.status_code == 400, (method, r.text)
        assert code_of(r) == "InvalidRequest" and message_of(r) == SIGV2_MESSAGE, r.text
        assert b"secret bytes" not in r.content
    assert s3.get_object(Bucket=bucket, Key="o")["Body"].read() == b"secret bytes"


# ---------------------------------------------------------------- C9: presigned expiry


def test_presigned_expires_bounds(node, s3, bucket):
    s3.put_object(Bucket=bucket, Key="o", Body=b"data")
    path = f"/{bucket}/o"
    ok = requests.get(presign_v4("GET", node.endpoint, path, expires="604800"), timeout=30)
    assert ok.status_code == 200 and ok.content == b"data", ok.text
    ok = requests.get(presign_v4("GET", node.endpoint, path, expires="5"), timeout=30)
    assert ok.status_code == 200, ok.text
    for bad, msg in (("604801", "less than a week"), ("0", "at least 1"), ("-1", "non-negative"),
                     ("soon", "should be a number")):
        r = requests.get(presign_v4("GET", node.endpoint, path, expires=bad), timeout=30)
        assert r.status_code == 400, (bad, r.status_code, r.text)
        assert code_of(r) == "AuthorizationQueryParametersError", (bad, r.text)
        assert msg in message_of(r), (bad, r.text)
    # a presigned PUT with a too long validity writes nothing
    r = requests.put(presign_v4("PUT", node.endpoint, f"/{bucket}/long", expires="9999999"),
                     data=b"x", timeout=30)
    assert r.status_code == 400 and code_of(r) == "AuthorizationQueryParametersError", r.text
    assert "long" not in listed(s3, bucket)


def test_expired_presigned_url_is_403_access_denied(node, s3, bucket):
    s3.put_object(Bucket=bucket, Key="o", Body=b"data")
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    for method, path in (("GET", f"/{bucket}/o"), ("PUT", f"/{bucket}/late")):
        url = presign_v4(method, node.endpoint, path, when=past, expires="3600")
        r = requests.request(method, url, data=b"y" if method == "PUT" else None, timeout=30)
        assert r.status_code == 403, (method, r.status_code, r.text)
        assert code_of(r) == "AccessDenied" and message_of(r) == "Request has expired", r.text
    assert "late" not in listed(s3, bucket)
    # within its validity the same construction works
    url = presign_v4("GET", node.endpoint, f"/{bucket}/o", when=past, expires="604800")
    assert requests.get(url, timeout=30).status_code == 200


# ---------------------------------------------------------------- C10: region


def signed_for(region: str, method: str, url: str, body: bytes = b"") -> requests.Response:
    """A SigV4 header-signed request whose credential scope names ``region``. (botocore itself
    would follow the <Region> of the answer and retry, as it does with AWS.)"""
    req = AWSRequest(method=method, url=url, data=body)
    S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", region).add_auth(req)
    return requests.request(method, url, data=body, headers=dict(req.headers), timeout=30)


def test_header_credential_for_another_region(node, s3, bucket):
    r = signed_for("eu-west-1", "PUT", f"{node.endpoint}/{bucket}/wrong-region", b"x")
    assert r.status_code == 400, r.text
    assert code_of(r) == "AuthorizationHeaderMalformed", r.text
    assert message_of(r) == ("The authorization header is malformed; the region 'eu-west-1' is wrong; "
                             "expecting 'us-east-1'"), r.text
    assert b"<Region>us-east-1</Region>" in r.content
    assert "wrong-region" not in listed(s3, bucket)
    r = signed_for("eu-west-1", "GET", f"{node.endpoint}/{bucket}?list-type=2")
    assert r.status_code == 400 and code_of(r) == "AuthorizationHeaderMalformed", r.text
    assert signed_for(REGION, "PUT", f"{node.endpoint}/{bucket}/right", b"x").status_code == 200


def test_presigned_credential_for_another_region(node, s3, bucket):
    s3.put_object(Bucket=bucket, Key="o", Body=b"data")
    r = requests.get(presign_v4("GET", node.endpoint, f"/{bucket}/o", region="eu-west-1"), timeout=30)
    assert r.status_code == 400, r.text
    assert code_of(r) == "AuthorizationQueryParametersError", r.text
    assert "the region 'eu-west-1' is wrong; expecting 'us-east-1'" in message_of(r), r.text
    assert b"<Region>us-east-1</Region>" in r.content
    r = requests.put(presign_v4("PUT", node.endpoint, f"/{bucket}/wrong", region="eu-west-1"),
                     data=b"x", timeout=30)
    assert r.status_code == 400, r.text
    assert "wrong" not in listed(s3, bucket)


# ---------------------------------------------------------------- D14: received bytes


def test_body_limit_counts_received_bytes(start_node, tmp_path):
    n = start_node(tmp_path / "data", ["--max-body-bytes", str(MiB)])
    s3 = n.client()
    b = "lim-" + uuid.uuid4().hex[:8]
    s3.create_bucket(Bucket=b)
    s3.put_object(Bucket=b, Key="at-limit", Body=os.urandom(MiB))
    assert s3.head_object(Bucket=b, Key="at-limit")["ContentLength"] == MiB

    def lie(request, **_):
        request.headers["x-amz-decoded-content-length"] = "1"

    s3.meta.events.register("before-sign.s3.PutObject", lie)
    try:
        expect_error(400, "EntityTooLarge", s3.put_object, Bucket=b, Key="twice", Body=os.urandom(2 * MiB))
        expect_error(400, "EntityTooLarge", s3.put_object, Bucket=b, Key="over", Body=os.urandom(MiB + 1))
    finally:
        s3.meta.events.unregister("before-sign.s3.PutObject", lie)
    assert sorted(listed(s3, b)) == ["at-limit"]
