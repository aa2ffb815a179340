"""Hostile and broken connections against both daemons (issue 11 D11, A3).

D11: a TLS KMS and a TLS storage node with a connection cap of 4 and 1.5 s header/idle/body
timeouts. Idle TLS connections (handshake done, nothing sent) are closed by each server after the
header deadline; more idle connections than the cap make new ones wait (not served past the cap),
and once the idle ones are reaped `/health` and an SSE-S3 PUT to a new bucket (which needs a new
bucket key from the KMS) succeed. A request body that never arrives is answered, not held.

A3: a pooled ``requests.Session`` alternating PUTs that are answered before their body is read
(unauthenticated, NoSuchBucket, bad signature; bodies below and above the drain limit) with good
requests sees no connection reset.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from .harness import ACCESS_KEY, REGION, SECRET_KEY, Proc, _bin, _run_cli, make_client, assert_sse_s3

CAP = 4
TIMEOUT_MS = 1500
LIMIT_FLAGS = ["--max-connections", str(CAP), "--header-timeout-ms", str(TIMEOUT_MS),
               "--idle-timeout-ms", str(TIMEOUT_MS), "--body-timeout-ms", str(TIMEOUT_MS)]


class Held:
    """One connection held open and idle; records when the server closed it."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext | None, handshake_timeout=None):
        self.handshaken = threading.Event()
        self.closed = threading.Event()
        self.handshake_at = None
        self.closed_at = None
        self.error = None
        self.sock = socket.create_connection((host, port), timeout=60)
        self._t = threading.Thread(target=self._run, args=(host, ctx, handshake_timeout), daemon=True)
        self._t.start()

    def _run(self, host, ctx, handshake_timeout):
        s = self.sock
        try:
            if ctx is not None:
                s.settimeout(handshake_timeout or 60)
                s = ctx.wrap_socket(s, server_hostname=host)
                self.handshake_at = time.monotonic()
                self.handshaken.set()
                s.settimeout(60)
            while s.recv(4096):
                pass
        except (OSError, ssl.SSLError) as e:
            self.error = e
        finally:
            self.closed_at = time.monotonic()
            self.closed.set()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


@pytest.fixture(scope="module")
def tls_kms(tmp_path_factory):
    root = tmp_path_factory.mktemp("kms-tls")
    data = root / "data"
    pw = root / "passphrase"
    pw.write_text("conn-limits-" + uuid.uuid4().hex)
    pw.chmod(0o600)
    _run_cli([_bin("coffer-kms"), "init", "--data-dir", str(data), "--passphrase-file", str(pw),
              "--argon2", "dev"], "coffer-kms init")
    proc = Proc("coffer-kms-tls", [_bin("coffer-kms"), "serve", "--data-dir", str(data), "--listen",
                                   "127.0.0.1:0", "--passphrase-file", str(pw), "--no-mlock",
                                   *LIMIT_FLAGS], root / "logs")
    assert proc.url.startswith("https://")
    ca = data / "tls" / "ca.pem"
    cred = root / "storage.credential"
    _run_cli([_bin("coffer-kms"), "admin", "--url", proc.url, "--ca-file", str(ca), "--credential",
              str(data / "admin.credential"), "client", "create", "storage", "--buckets", "*",
              "--ops", "generate,unwrap", "--keys", "*", "--out", str(cred)], "coffer-kms admin client create")
    yield proc, ca, cred
    proc.stop()


@pytest.fixture(scope="module")
def tls_storage(tls_kms, tls_pair, tmp_path_factory):
    kms, ca, cred = tls_kms
    root = tmp_path_factory.mktemp("storage-tls")
    proc = Proc("coffer-storage-tls",
                [_bin("coffer-storage"), "serve", "--data-dir", str(root / "data"), "--listen",
                 "127.0.0.1:0", "--kms-url", kms.url, "--kms-credential", str(cred), "--kms-ca", str(ca),
                 "--kms-timeout-ms", "20000", "--tls-cert", str(tls_pair[0]), "--tls-key",
                 str(tls_pair[1]), *LIMIT_FLAGS],
                root / "logs", env={"COFFER_S3_ACCESS_KEY": ACCESS_KEY, "COFFER_S3_SECRET_KEY": SECRET_KEY})
    assert proc.url.startswith("https://")
    yield proc
    proc.stop()


def _hostport(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


def _ctx(ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def test_idle_tls_connections_are_reaped_and_the_cap_holds(tls_kms, tls_storage, tls_pair):
    kms, kms_ca, _ = tls_kms
    targets = [("storage", tls_storage.url, _ctx(tls_pair[0])), ("kms", kms.url, _ctx(kms_ca))]
    held: dict[str, list[Held]] = {}
    for name, url, ctx in targets:
        host, port = _hostport(url)
        hs = [Held(host, port, ctx) for _ in range(CAP)]
        for h in hs:
            assert h.handshaken.wait(10), f"{name}: a TLS handshake under the cap did not complete"
        # The cap: one more connection is not served while the others are held...
        extra = Held(host, port, ctx, handshake_timeout=0.5)
        assert extra.closed.wait(10)
        assert not extra.handshaken.is_set(), f"{name}: served a connection beyond the cap of {CAP}"
        # ...and more wait in the backlog (raw TCP, they never start TLS).
        hs += [Held(host, port, None) for _ in range(CAP)]
        held[name] = hs

    # Once the idle ones are reaped, the daemons answer.
    for name, url, ctx in targets:
        verify = str(tls_pair[0]) if name == "storage" else str(kms_ca)
        r = requests.get(url + "/health", verify=verify, timeout=60)
        assert r.status_code == 200, (name, r.status_code, r.text)
    s3 = make_client(tls_storage.url, verify=str(tls_pair[0]))
    bucket = "conn-" + uuid.uuid4().hex[:16]
    s3.create_bucket(Bucket=bucket)
    r = s3.put_object(Bucket=bucket, Key="k", Body=b"after the flood")
    assert_sse_s3(r, "PUT after idle connections were reaped")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"after the flood"

    # Every held connection was closed by the server, the TLS ones after the header deadline.
    for name, hs in held.items():
        for h in hs:
            assert h.closed.wait(30), f"{name}: an idle connection was never closed"
            if h.handshake_at is not None:
                lived = h.closed_at - h.handshake_at
                assert 0.5 < lived < 15, f"{name}: idle TLS connection closed after {lived:.2f} s"
            h.close()


def _tls_raw(url: str, ca: Path, request: bytes, bound: float) -> tuple[bytes, float]:
    host, port = _hostport(url)
    s = _ctx(ca).wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname=host)
    s.settimeout(bound)
    t = time.monotonic()
    s.sendall(request)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except (OSError, ssl.SSLError):
        pass
    finally:
        s.close()
    return out, time.monotonic() - t


def test_request_bodies_that_never_arrive_are_answered(tls_kms, tls_storage, tls_pair):
    kms, kms_ca, _ = tls_kms
    for url, ca, head in [
        (kms.url, kms_ca, b"POST /v1/keys/unwrap HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"),
        (tls_storage.url, tls_pair[0], b"PUT /some-bucket/k HTTP/1.1\r\nhost: x\r\n"),
    ]:
        out, took = _tls_raw(url, ca, head + b"content-length: 1000\r\n\r\n{", bound=20)
        assert out.startswith(b"HTTP/1.1 4"), (url, out[:200], took)
        assert took < 15, (url, took)


def _signed(method: str, url: str, body: bytes, secret: str = SECRET_KEY) -> dict:
    req = AWSRequest(method=method, url=url, data=body)
    S3SigV4Auth(Credentials(ACCESS_KEY, secret), "s3", REGION).add_auth(req)
    return dict(req.prepare().headers)


def test_early_answers_do_not_reset_pooled_connections(node, s3):
    bucket = "early-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=bucket)
    sess = requests.Session()
    small, large = b"s" * 300_000, b"L" * 3_000_000
    resets = []
    statuses = []
    for i in range(40):
        missing = f"{node.url}/no-such-bucket-{uuid.uuid4().hex[:8]}/k"
        bad = [
            ("unsigned", f"{node.url}/{bucket}/k", {}, small),
            ("no-such-bucket", missing, _signed("PUT", missing, small), small),
            ("bad-signature", f"{node.url}/{bucket}/k",
             _signed("PUT", f"{node.url}/{bucket}/k", large, secret="wrong"), large),
        ]
        what, url, headers, body = bad[i % len(bad)]
        try:
            r = sess.put(url, data=body, headers=headers, timeout=30)
            statuses.append((what, r.status_code))
        except requests.ConnectionError as e:
            resets.append((i, what, repr(e)[:200]))
        try:
            r = sess.get(node.url + "/health", timeout=30)
            assert r.status_code == 200
            good = f"{node.url}/{bucket}/ok-{i}"
            r = sess.put(good, data=b"fine", headers=_signed("PUT", good, b"fine"), timeout=30)
            assert r.status_code == 200, r.text
        except requests.ConnectionError as e:
            resets.append((i, "good after " + what, repr(e)[:200]))
    assert resets == [], resets
    assert {s for _, s in statuses} <= {403, 404}, statuses
    assert ("no-such-bucket", 404) in statuses and ("bad-signature", 403) in statuses, statuses
