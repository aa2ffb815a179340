"""Harness for the SSE real-client suite: boots coffer-kms and coffer-storage on ephemeral ports in
temp dirs, gives boto3 clients for them, and dumps both processes' stderr when a test fails.

Process contract (see the report in the commit / issue 4):
- ``coffer-kms init --data-dir D --passphrase-file P --argon2 dev`` writes ``D/admin.credential``;
- ``coffer-kms serve ... --listen 127.0.0.1:0 --insecure-http`` prints ``listening on http://127.0.0.1:PORT``
  (HTTPS is the KMS default; this suite keeps loopback HTTP so the fault proxy can sit in between);
- ``coffer-kms admin --url U --credential C client create NAME --buckets '*' --ops generate,unwrap --keys '*'
  --out CRED`` writes the storage node's service credential;
- ``coffer-storage serve --data-dir S --listen 127.0.0.1:0 --kms-url U --kms-credential CRED [...]``
  with ``COFFER_S3_ACCESS_KEY``/``COFFER_S3_SECRET_KEY`` prints ``listening on http(s)://...``;
  SIGTERM stops it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import boto3
import pytest
import requests
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

import coffer_blobstore
import coffer_pg

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("COFFER_BIN_DIR", REPO / "target" / "debug"))
READY_TIMEOUT = float(os.environ.get("COFFER_READY_TIMEOUT", "60"))

ACCESS_KEY = "coffer-sse-test"
SECRET_KEY = "sse-secret-" + secrets.token_hex(12)
REGION = "us-east-1"

# Test keys used by public S3 test suites.
KEY_A_B64 = "pO3upElrwuEXSoFwCfnZPdSsmt/xWeFa0N9KgDijwVs="
KEY_A_MD5 = "DWygnHRtgiJ77HCm+1rvHw=="
KEY_B_B64 = "6b+WOZ1T3cqZMxgThRcXAQBrS5mXKdDUphvpxptl9/4="
KEY_B_MD5 = "arxBvwY2V4SiOne6yppVPQ=="
KEY_A = base64.b64decode(KEY_A_B64)
KEY_B = base64.b64decode(KEY_B_B64)
assert base64.b64encode(hashlib.md5(KEY_A).digest()).decode() == KEY_A_MD5
assert base64.b64encode(hashlib.md5(KEY_B).digest()).decode() == KEY_B_MD5

SSE_HDR = "x-amz-server-side-encryption"
SSEC_ALG = "x-amz-server-side-encryption-customer-algorithm"
SSEC_KEY = "x-amz-server-side-encryption-customer-key"
SSEC_MD5 = "x-amz-server-side-encryption-customer-key-md5"
CPS = "x-amz-copy-source-server-side-encryption-customer-"
MiB = 1024 * 1024
SEG = 64 * 1024


# ====================================================================== processes

_PROCS: list["Proc"] = []


class Proc:
    """A server process whose readiness is its ``listening on URL`` stdout line."""

    def __init__(self, name: str, args: list[str], logdir: Path, env: dict | None = None):
        self.name = name
        self.args = args
        logdir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = logdir / f"{name}.stdout.log"
        self.stderr_path = logdir / f"{name}.stderr.log"
        full_env = dict(os.environ)
        full_env.update({"NO_COLOR": "1", "RUST_BACKTRACE": "1"})
        full_env.pop("COFFER_KMS_PASSPHRASE", None)
        if env:
            full_env.update(env)
        self._stderr_f = open(self.stderr_path, "wb")
        self.popen = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr_f,
            env=full_env,
        )
        self.url: str | None = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        _PROCS.append(self)
        if not self._ready.wait(READY_TIMEOUT) or self.url is None:
            self.stop()
            raise RuntimeError(
                f"{name} did not print 'listening on' (exit={self.popen.poll()}):\n"
                f"cmd: {' '.join(args)}\n{self.logs()}"
            )

    def _read_stdout(self) -> None:
        with open(self.stdout_path, "wb") as out:
            for line in self.popen.stdout:  # type: ignore[union-attr]
                out.write(line)
                out.flush()
                text = line.decode("utf-8", "replace").strip()
                if self.url is None and text.startswith("listening on "):
                    self.url = text[len("listening on ") :].strip().rstrip("/")
                    self._ready.set()
        self._ready.set()  # EOF: exited

    def stderr_size(self) -> int:
        try:
            return self.stderr_path.stat().st_size
        except OSError:
            return 0

    def logs(self, since: int = 0, max_lines: int = 300) -> str:
        parts = []
        for label, path, off in (("stdout", self.stdout_path, 0), ("stderr", self.stderr_path, since)):
            try:
                with open(path, "rb") as f:
                    f.seek(off)
                    data = f.read().decode("utf-8", "replace")
            except OSError:
                data = ""
            lines = data.splitlines()
            if len(lines) > max_lines:
                lines = [f"... ({len(lines) - max_lines} lines skipped)"] + lines[-max_lines:]
            parts.append(f"--- {self.name} {label}:\n" + "\n".join(lines))
        return "\n".join(parts)

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._reader.join(5)
        with contextlib.suppress(Exception):
            self._stderr_f.close()
        return self.popen.returncode


def _run_cli(args: list[str], what: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_COLOR="1")
    env.pop("COFFER_KMS_PASSPHRASE", None)
    out = subprocess.run(args, capture_output=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(
            f"{what} failed ({out.returncode}): {' '.join(args)}\n"
            f"stdout:\n{out.stdout.decode(errors='replace')}\nstderr:\n{out.stderr.decode(errors='replace')}"
        )
    return out


def _bin(name: str) -> str:
    p = BIN_DIR / name
    if not p.exists():
        pytest.skip(f"{p} not built (set COFFER_BIN_DIR)")
    return str(p)


class Kms:
    def __init__(self, root: Path, client_args: tuple[str, ...] = ()):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.data_dir = root / "data"
        self.passphrase = "sse-suite-pass-" + secrets.token_hex(16)
        self.passphrase_file = root / "passphrase"
        fd = os.open(self.passphrase_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.passphrase)
        # COFFER_TEST_DATABASE=postgres: the KMS state in a fresh PostgreSQL database too.
        self.db_args = ["--database-url", coffer_pg.fresh_database()] if coffer_pg.ENABLED else []
        _run_cli(
            [_bin("coffer-kms"), "init", "--data-dir", str(self.data_dir),
             "--passphrase-file", str(self.passphrase_file), "--argon2", "dev", *self.db_args],
            "coffer-kms init",
        )
        self.admin_credential = self.data_dir / "admin.credential"
        self.proc = Proc(
            "coffer-kms",
            [_bin("coffer-kms"), "serve", "--data-dir", str(self.data_dir), "--listen", "127.0.0.1:0",
             "--passphrase-file", str(self.passphrase_file), "--no-mlock", "--insecure-http",
             *self.db_args],
            root / "logs",
        )
        self.url = self.proc.url
        self.credential = root / "storage.credential"
        # Every named KMS key unless the caller chooses the scope.
        keys = () if "--keys" in client_args else ("--keys", "*")
        _run_cli(
            [_bin("coffer-kms"), "admin", "--url", self.url, "--credential", str(self.admin_credential),
             "client", "create", "storage", "--buckets", "*", "--ops", "generate,unwrap",
             *keys, *client_args, "--out", str(self.credential)],
            "coffer-kms admin client create",
        )

    def admin(self, *args: str) -> subprocess.CompletedProcess:
        """``coffer-kms admin --url U --credential C ARGS…`` (must succeed)."""
        return _run_cli(
            [_bin("coffer-kms"), "admin", "--url", self.url, "--credential", str(self.admin_credential),
             *args],
            "coffer-kms admin " + " ".join(args[:2]),
        )

    def stop(self) -> None:
        self.proc.stop()


class Node:
    """A running coffer-storage."""

    def __init__(self, root: Path, kms: Kms, *, kms_url: str | None = None,
                 allow_ssec_over_http: bool = True, allow_sse_kms_over_http: bool = False,
                 default_encryption: str | None = None,
                 key_cache_ttl: float | None = None, kms_timeout_ms: int | None = None,
                 tls: tuple[Path, Path] | None = None, data_dir: Path | None = None,
                 name: str = "coffer-storage", extra: tuple[str, ...] = (),
                 env: dict | None = None):
        self.root = root
        self.kms = kms
        self.data_dir = data_dir or (root / "data")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.kms_url = kms_url or kms.url
        self.tls = tls
        args = [_bin("coffer-storage"), "serve", "--data-dir", str(self.data_dir),
                "--listen", "127.0.0.1:0", "--kms-url", self.kms_url,
                "--kms-credential", str(kms.credential)]
        if self.kms_url.startswith("http://"):
            args.append("--kms-insecure-http")
        if tls:
            args += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        if allow_ssec_over_http:
            args.append("--allow-ssec-over-http")
        if allow_sse_kms_over_http:
            args.append("--allow-sse-kms-over-http")
        if default_encryption is not None:
            args += ["--default-encryption", default_encryption]
        if key_cache_ttl is not None:
            args += ["--key-cache-ttl", str(key_cache_ttl)]
        if kms_timeout_ms is not None:
            args += ["--kms-timeout-ms", str(kms_timeout_ms)]
        # COFFER_TEST_DATABASE=postgres: this data dir's own PostgreSQL database (tests/coffer_pg.py).
        if "--database-url" not in extra:
            args += coffer_pg.database_args(self.data_dir)
        # COFFER_TEST_BLOB_STORE=coffer|moto: this data dir's prefix on the shared blob backend.
        if "--blob-store" not in extra:
            args += coffer_blobstore.blob_args(self.data_dir)
        args += list(extra)
        self.args = args
        self.proc = Proc(name, args, root / "logs",
                         env={"COFFER_S3_ACCESS_KEY": ACCESS_KEY, "COFFER_S3_SECRET_KEY": SECRET_KEY,
                              **(env or {})})
        self.url = self.proc.url
        self.verify = str(tls[0]) if tls else None

    def client(self, **cfg):
        return make_client(self.url, verify=self.verify, **cfg)

    def stop(self) -> None:
        self.proc.stop()


def make_client(url: str, verify=None, read_timeout: float = 60, **cfg):
    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
    )
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=read_timeout,
        **cfg,
    )
    client = session.client("s3", endpoint_url=url, config=config, verify=verify)
    coffer_blobstore.record_names(client)
    return client


# ====================================================================== fixtures


@pytest.fixture(scope="session", autouse=True)
def blob_backend_scan():
    """Under COFFER_TEST_BLOB_STORE: at session end, no bucket or object name in the backend."""
    yield
    hits = coffer_blobstore.scan_names()
    assert not hits, "names on the blob backend:\n" + "\n".join(hits[:50])


@pytest.fixture(scope="session")
def kms(tmp_path_factory) -> Kms:
    k = Kms(tmp_path_factory.mktemp("kms"))
    yield k
    k.stop()


@pytest.fixture(scope="session")
def start_node(kms, tmp_path_factory):
    """Factory: ``start_node(**flags) -> Node`` (stopped at session end, or call ``.stop()``)."""
    nodes: list[Node] = []

    def start(**kw) -> Node:
        n = Node(tmp_path_factory.mktemp("node"), kms, **kw)
        nodes.append(n)
        return n

    yield start
    for n in nodes:
        n.stop()


@pytest.fixture(scope="session")
def node(start_node) -> Node:
    """Storage node over plain HTTP, SSE-C allowed over HTTP, node default (SSE-S3 for new buckets)."""
    return start_node()


@pytest.fixture(scope="session")
def s3(node):
    return node.client()


@pytest.fixture(scope="session")
def plain_node(start_node) -> Node:
    """Storage node whose new buckets have no default encryption (`--default-encryption none`)."""
    return start_node(default_encryption="none")


@pytest.fixture(scope="session")
def strict_node(start_node) -> Node:
    """Storage node over plain HTTP without --allow-ssec-over-http (E9)."""
    return start_node(allow_ssec_over_http=False)


@pytest.fixture(scope="session")
def plain_s3(plain_node):
    return plain_node.client()


def new_bucket_name() -> str:
    return "sse-" + uuid.uuid4().hex[:20]


def create_bucket(client) -> str:
    name = new_bucket_name()
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def bucket(s3) -> str:
    """A fresh bucket on ``node`` (SSE-S3 default from the node setting)."""
    return create_bucket(s3)


@pytest.fixture
def plain_bucket(plain_s3) -> str:
    """A fresh bucket on ``plain_node`` (no default encryption)."""
    return create_bucket(plain_s3)


@pytest.fixture(scope="session")
def tls_pair(tmp_path_factory):
    """Self-signed certificate for 127.0.0.1 (openssl CLI), or skip."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not available")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    _run_cli(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        "openssl req",
    )
    os.chmod(key, 0o600)
    return cert, key


# ====================================================================== failure logs

_TEST_START: dict[str, dict[int, int]] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _TEST_START[item.nodeid] = {id(p): p.stderr_size() for p in _PROCS}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        starts = _TEST_START.get(item.nodeid, {})
        for p in list(_PROCS):
            since = starts.get(id(p), 0)
            rep.sections.append(
                (f"{p.name} ({p.url}) output since test start", p.logs(since=since))
            )
    if call.when == "teardown":
        _TEST_START.pop(item.nodeid, None)


# ====================================================================== helpers


def md5hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def md5b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ssec(key: bytes) -> dict:
    """boto3 params for an SSE-C trio. The key is given base64-encoded with its MD5, which every
    operation accepts (botocore only base64-encodes raw keys itself for some operations)."""
    return {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": b64(key), "SSECustomerKeyMD5": md5b64(key)}


def ssec_src(key: bytes) -> dict:
    return {"CopySourceSSECustomerAlgorithm": "AES256", "CopySourceSSECustomerKey": b64(key),
            "CopySourceSSECustomerKeyMD5": md5b64(key)}


def trio_headers(alg="AES256", key: bytes | str | None = None, md5: str | None | bool = True,
                 prefix: str = "x-amz-server-side-encryption-customer-") -> dict:
    """Raw trio headers. ``key`` bytes are base64-encoded; ``md5=True`` computes the right MD5;
    None leaves a header out."""
    h = {}
    if alg is not None:
        h[prefix + "algorithm"] = alg
    key_b64 = None
    if key is not None:
        key_b64 = b64(key) if isinstance(key, bytes) else key
        h[prefix + "key"] = key_b64
    if md5 is True:
        if isinstance(key, bytes):
            h[prefix + "key-MD5"] = md5b64(key)
    elif md5 is not None and md5 is not False:
        h[prefix + "key-MD5"] = md5
    return h


ALL_SSE_HEADER_PREFIXES = ("x-amz-server-side-encryption", "x-amz-copy-source-server-side-encryption")


@contextlib.contextmanager
def raw_headers(client, set_headers: dict | None = None, remove: tuple[str, ...] = (),
                strip_sse: bool = False, op: str = "*"):
    """Edit the next requests' headers right before signing (bypasses boto3's own SSE handling).

    ``strip_sse`` removes every SSE header boto3 put there, so that ``set_headers`` are the only ones.
    """
    set_headers = dict(set_headers or {})

    def hook(request, **_):
        if strip_sse:
            for h in list(request.headers.keys()):
                if h.lower().startswith(ALL_SSE_HEADER_PREFIXES):
                    del request.headers[h]
        for h in remove:
            for existing in list(request.headers.keys()):
                if existing.lower() == h.lower():
                    del request.headers[existing]
        for k, v in set_headers.items():
            for existing in list(request.headers.keys()):
                if existing.lower() == k.lower():
                    del request.headers[existing]
            request.headers[k] = v

    event = f"before-sign.s3.{op}"
    client.meta.events.register(event, hook, unique_id=f"raw-headers-{id(hook)}")
    try:
        yield
    finally:
        client.meta.events.unregister(event, unique_id=f"raw-headers-{id(hook)}")


def client_error(fn, *args, **kwargs) -> ClientError:
    try:
        r = fn(*args, **kwargs)
    except ClientError as e:
        return e
    body = r.get("Body") if isinstance(r, dict) else None
    if body is not None:
        body.close()
    meta = r.get("ResponseMetadata", {}) if isinstance(r, dict) else {}
    pytest.fail(f"expected an error, got HTTP {meta.get('HTTPStatusCode')}: {r!r}")


def expect_error(status: int, code: str | tuple[str, ...] | None, fn, *args,
                 message: str | None = None, **kwargs) -> ClientError:
    """Call ``fn`` and assert it fails with ``status`` and error ``code`` (one of, if a tuple;
    ``None`` for HEAD, which has no body). ``message``: case-insensitive substring of the message."""
    e = client_error(fn, *args, **kwargs)
    got_status = e.response["ResponseMetadata"]["HTTPStatusCode"]
    got_code = e.response.get("Error", {}).get("Code")
    got_msg = e.response.get("Error", {}).get("Message", "")
    assert got_status == status, f"HTTP {got_status} {got_code} {got_msg!r}, expected {status} {code}"
    if code is None:
        # HEAD: no body, botocore reports the status as the code
        assert got_code in (str(status), None, ""), f"HEAD error with a parsed body? {got_code}"
    else:
        codes = code if isinstance(code, tuple) else (code,)
        assert got_code in codes, f"code {got_code!r} ({got_msg!r}), expected {codes} (HTTP {got_status})"
    if message is not None:
        assert message.lower() in (got_msg or "").lower(), f"message {got_msg!r} lacks {message!r}"
    return e


def headers_of(resp) -> dict:
    """Lower-cased HTTP response headers of a boto3 response or ClientError."""
    if isinstance(resp, ClientError):
        resp = resp.response
    return {k.lower(): v for k, v in resp["ResponseMetadata"]["HTTPHeaders"].items()}


def assert_sse_s3(resp, what=""):
    h = headers_of(resp)
    assert h.get(SSE_HDR) == "AES256", f"{what}: x-amz-server-side-encryption = {h.get(SSE_HDR)!r}"
    assert SSEC_ALG not in h and SSEC_MD5 not in h, f"{what}: SSE-C headers on SSE-S3: {h}"


def assert_ssec(resp, key: bytes, what=""):
    h = headers_of(resp)
    assert h.get(SSEC_ALG) == "AES256", f"{what}: customer-algorithm = {h.get(SSEC_ALG)!r}"
    assert h.get(SSEC_MD5) == md5b64(key), f"{what}: key-MD5 = {h.get(SSEC_MD5)!r}"
    assert SSE_HDR not in h, f"{what}: x-amz-server-side-encryption on SSE-C: {h.get(SSE_HDR)!r}"
    assert SSEC_KEY not in h, f"{what}: the customer key was echoed!"


def assert_plain(resp, what=""):
    h = headers_of(resp)
    assert SSE_HDR not in h, f"{what}: unexpected {SSE_HDR}: {h.get(SSE_HDR)!r}"
    assert SSEC_ALG not in h and SSEC_MD5 not in h, f"{what}: unexpected SSE-C headers"


def get_bytes(client, bucket, key, **kw) -> tuple[bytes, dict]:
    r = client.get_object(Bucket=bucket, Key=key, **kw)
    data = r["Body"].read()
    return data, r


def rand(n: int) -> bytes:
    return os.urandom(n)


def signed_request(node: Node, method: str, path: str, query: str = "", headers: dict | None = None,
                   body: bytes = b"", timeout: float = 30) -> requests.Response:
    """A raw SigV4-signed request (for bodies boto3 would not send)."""
    url = node.url + path + (("?" + query) if query else "")
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", REGION).add_auth(req)
    prepared = req.prepare()
    return requests.request(method, prepared.url, headers=dict(prepared.headers), data=body,
                            timeout=timeout, verify=node.verify if node.verify else True)


def error_code_of(resp: requests.Response) -> str | None:
    import re

    m = re.search(rb"<Code>([^<]*)</Code>", resp.content or b"")
    return m.group(1).decode() if m else None


def wait_until(pred, timeout: float, interval: float = 0.1):
    """Poll ``pred`` until truthy (returns it) or ``timeout`` (returns the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)
