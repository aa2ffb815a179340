"""`coffer-storage serve --config`: the example config in deploy/ runs a real node (HTTPS, against a
real KMS over TLS), flags beat environment beats file, and the node refuses to start on a secret
file others can read, a missing or wrong KMS CA, a plain-http KMS URL or an unknown setting. Also
checks the systemd units in deploy/ against the binaries' real settings, and the node's /metrics
and /ready routes."""

import configparser
import glob
import json
import os
import re
import subprocess
import tempfile
import threading
import tomllib

import boto3
import botocore.config
import botocore.exceptions
import pytest
import requests

from devproc import BIN, ROOT, Dev

DEPLOY = os.path.join(ROOT, "deploy")
EXAMPLE = os.path.join(DEPLOY, "storage.example.toml")
SECRET = "config-test-secret-0123456789"


@pytest.fixture(scope="module")
def dev():
    """A dev deployment: its KMS (TLS, generated CA) serves the nodes these tests start."""
    with tempfile.TemporaryDirectory() as d:
        root = os.path.join(d, "data")
        dev = Dev(root)
        dev.root = root
        try:
            yield dev
        finally:
            dev.stop()


def toml_line(key, value):
    return f"{key} = {json.dumps(value)}\n"  # JSON strings, numbers, bools and arrays are TOML


def write_config(path, settings):
    with open(path, "w") as f:
        for k, v in settings.items():
            f.write(toml_line(k, v))


def secret_file(path, text, mode=0o600):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def example_settings(dev, tmp):
    """The example config with its paths pointed at this machine's files."""
    with open(EXAMPLE, "rb") as f:
        s = tomllib.load(f)
    s.update(
        data_dir=os.path.join(tmp, "node"),
        listen="127.0.0.1:0",
        tls_cert=os.path.join(dev.root, "tls", "s3.pem"),
        tls_key=os.path.join(dev.root, "tls", "s3.key"),
        secret_key_file=secret_file(os.path.join(tmp, "s3-secret"), SECRET + "\n"),
        kms_url=dev.env["KMS_URL"],
        kms_ca=dev.env["CA_BUNDLE"],
        kms_credential=os.path.join(dev.root, "storage.credential"),
    )
    return s


class Node:
    """`coffer-storage serve` started from a config file; `url` once it listens, else `failed`."""

    def __init__(self, config, args=(), env=None):
        e = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "COFFER_"))}
        e.update(env or {})
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "coffer-storage"), "serve", "--config", config, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
        self.err = []
        self.reader = threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True)
        self.reader.start()
        line = self.proc.stdout.readline()
        self.url = None
        if line.startswith("listening on "):
            self.url = line.split()[-1].replace("127.0.0.1", "localhost")
        else:
            self.proc.wait(timeout=30)

    @property
    def stderr(self):
        """Everything the node wrote to stderr once it has exited; so far while it runs."""
        if self.url is None or self.proc.poll() is not None:
            self.proc.wait(timeout=30)
            self.reader.join(timeout=30)
        return "".join(self.err)

    def client(self, ca):
        return boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id="coffer-admin",
            aws_secret_access_key=SECRET, region_name="us-east-1", verify=ca,
            config=botocore.config.Config(s3={"addressing_style": "path"},
                                          retries={"max_attempts": 1}))

    def stop(self):
        if self.url is not None:
            self.proc.terminate()
            assert self.proc.wait(timeout=30) == 0, self.stderr


def refused(config, *needles, env=None):
    node = Node(config, env=env)
    if node.url is not None:
        node.stop()
        raise AssertionError(f"the node started: {node.url}\n{node.stderr}")
    try:
        assert node.proc.returncode != 0
        err = node.stderr
        for n in needles:
            assert n in err, err
        return err
    finally:
        node.stop()


MiB = 1024 * 1024


def test_example_config_serves_https_with_the_kms_and_metrics(dev, tmp_path):
    s = example_settings(dev, str(tmp_path))
    s["max_body_bytes"] = 1 * MiB
    cfg = str(tmp_path / "storage.toml")
    write_config(cfg, s)
    node = Node(cfg, env={"COFFER_LOG_FORMAT": "json"})
    try:
        assert node.url and node.url.startswith("https://"), node.stderr
        s3 = node.client(dev.env["CA_BUNDLE"])
        s3.create_bucket(Bucket="cfg")
        data = os.urandom(200_000)
        r = s3.put_object(Bucket="cfg", Key="k", Body=data)
        assert r["ServerSideEncryption"] == "AES256"  # default_encryption = "sse-s3" via the KMS
        put_id = r["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
        assert s3.get_object(Bucket="cfg", Key="k")["Body"].read() == data
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.put_object(Bucket="cfg", Key="big", Body=os.urandom(2 * MiB))
        assert e.value.response["Error"]["Code"] == "EntityTooLarge"  # max_body_bytes applied

        ca = dev.env["CA_BUNDLE"]
        assert requests.get(node.url + "/ready", verify=ca, timeout=10).status_code == 200
        m = requests.get(node.url + "/metrics", verify=ca, timeout=10)
        assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
        text = m.text
        assert re.search(r'^coffer_s3_requests_total\{operation="PutObject",status="200"\} 1$', text, re.M), text
        assert re.search(r'^coffer_s3_requests_total\{operation="PutObject",status="400"\} 1$', text, re.M), text
        assert re.search(r'^coffer_s3_requests_total\{operation="GetObject",status="200"\} 1$', text, re.M), text
        assert re.search(r'^coffer_s3_request_duration_seconds_count\{operation="CreateBucket"\} 1$', text, re.M)
        assert re.search(r"^coffer_kms_calls_total [1-9]", text, re.M), text
        assert "cfg" not in re.sub(r"^#.*$", "", text, flags=re.M).replace("coffer", "")

        # HEAD answers carry no body, also over HTTP/2 (Go clients such as rclone reject DATA
        # frames on HEAD as a protocol error).
        for path in ("/cfg/missing", "/cfg/k"):
            out = subprocess.run(["curl", "-s", "--http2", "-I", "--cacert", ca, "-o", "/dev/null",
                                  "-w", "%{http_version} %{http_code}", node.url + path],
                                 capture_output=True, text=True, timeout=30)
            assert out.returncode == 0 and out.stdout == "2 403", (out.returncode, out.stdout)
    finally:
        node.stop()
    # JSON log lines; the PUT's line carries the request id the client saw, and its status.
    lines = [json.loads(l) for l in node.stderr.splitlines() if l.strip()]
    put = [l for l in lines if l.get("span", {}).get("request_id") == put_id
           and l.get("fields", {}).get("status") == 200]
    assert put and put[0]["span"]["method"] == "PUT" and put[0]["span"]["path"] == "/cfg/k", lines[-5:]
    assert SECRET not in node.stderr


def test_flags_beat_environment_beats_file(dev, tmp_path):
    s = example_settings(dev, str(tmp_path))
    s["max_body_bytes"] = 1 * MiB
    cfg = str(tmp_path / "storage.toml")
    write_config(cfg, s)
    body = os.urandom(2 * MiB)

    def put_ok(args=(), env=None):
        node = Node(cfg, args, env)
        try:
            assert node.url, node.stderr
            s3 = node.client(dev.env["CA_BUNDLE"])
            s3.create_bucket(Bucket="prec")
            try:
                s3.put_object(Bucket="prec", Key="k", Body=body)
                return True
            except botocore.exceptions.ClientError as e:
                assert e.response["Error"]["Code"] == "EntityTooLarge"
                return False
        finally:
            node.stop()

    assert not put_ok()  # file: 1 MiB
    assert put_ok(env={"COFFER_MAX_BODY_BYTES": str(4 * MiB)})  # env beats file
    assert not put_ok(args=("--max-body-bytes", str(MiB)), env={"COFFER_MAX_BODY_BYTES": str(4 * MiB)})


def test_world_readable_secrets_are_refused(dev, tmp_path):
    s = example_settings(dev, str(tmp_path))
    cfg = str(tmp_path / "storage.toml")
    os.chmod(s["secret_key_file"], 0o644)
    write_config(cfg, s)
    refused(cfg, s["secret_key_file"], "group or others", "chmod 600")

    os.chmod(s["secret_key_file"], 0o600)
    cred = secret_file(str(tmp_path / "cred"), open(s["kms_credential"]).read(), 0o640)
    s["kms_credential"] = cred
    write_config(cfg, s)
    refused(cfg, cred, "group or others")

    key = secret_file(str(tmp_path / "s3.key"), open(s["tls_key"]).read(), 0o604)
    s["kms_credential"] = os.path.join(dev.root, "storage.credential")
    s["tls_key"] = key
    write_config(cfg, s)
    refused(cfg, key, "group or others")


def test_missing_or_wrong_kms_ca_refuses_to_start(dev, tmp_path):
    s = example_settings(dev, str(tmp_path))
    cfg = str(tmp_path / "storage.toml")
    del s["kms_ca"]
    write_config(cfg, s)
    refused(cfg, "needs a CA bundle", "refusing")

    # A CA that did not issue the KMS certificate.
    other = tmp_path / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(tmp_path / "other-ca.key"), "-out", str(other),
                    "-days", "1", "-subj", "/CN=not the coffer CA"], check=True, capture_output=True)
    s["kms_ca"] = str(other)
    write_config(cfg, s)
    refused(cfg, "failed TLS verification", "refusing to start")

    # Plain http to the KMS is refused unless asked for explicitly.
    s["kms_ca"] = dev.env["CA_BUNDLE"]
    s["kms_url"] = dev.env["KMS_URL"].replace("https://", "http://")
    write_config(cfg, s)
    refused(cfg, "plain http")


def test_unknown_settings_and_bad_values_are_refused(dev, tmp_path):
    cfg = str(tmp_path / "storage.toml")
    s = example_settings(dev, str(tmp_path))
    s["kms_timeout"] = 5
    write_config(cfg, s)
    refused(cfg, "unknown setting `kms_timeout`", "kms_timeout_ms")
    del s["kms_timeout"]
    s["allow_ssec_over_http"] = "yes"
    write_config(cfg, s)
    refused(cfg, "`allow_ssec_over_http` must be true or false")


def test_ready_answers_503_when_the_kms_is_gone(tmp_path):
    d = Dev(str(tmp_path / "data"))
    try:
        ca = d.env["CA_BUNDLE"]
        assert requests.get(d.env["ENDPOINT"] + "/ready", verify=ca, timeout=10).status_code == 200
        os.kill(d.kms_pid, 9)
        for _ in range(100):
            r = requests.get(d.env["ENDPOINT"] + "/ready", verify=ca, timeout=10)
            if r.status_code == 503:
                break
        assert r.status_code == 503 and "KMS" in r.text
        assert requests.get(d.env["ENDPOINT"] + "/health", verify=ca, timeout=10).status_code == 200
    finally:
        d.stop()


def serve_help(binary):
    out = subprocess.run([os.path.join(BIN, binary), "serve", "--help"], capture_output=True,
                         text=True, check=True)
    return out.stdout


@pytest.mark.parametrize("unit", sorted(glob.glob(os.path.join(DEPLOY, "*.service"))))
def test_systemd_units_use_real_settings(unit):
    binary = os.path.basename(unit).removesuffix(".service")
    example = os.path.join(DEPLOY, binary.removeprefix("coffer-") + ".example.toml")
    assert os.path.exists(example), f"{unit} has no example config {example}"
    p = configparser.ConfigParser(strict=False, interpolation=None)
    p.optionxform = str
    p.read(unit)
    assert {"Unit", "Service", "Install"} <= set(p.sections())
    svc = p["Service"]
    exec_start = svc["ExecStart"].split()
    assert exec_start[0].endswith("/" + binary) and exec_start[1] == "serve"
    assert "--config" in exec_start
    assert svc["NoNewPrivileges"] == "yes" and svc["ProtectSystem"] == "strict"
    assert svc.get("User") and svc.get("User") != "root"
    help_text = serve_help(binary)
    raw = open(unit).read()
    for var in re.findall(r"^Environment=(COFFER_[A-Z0-9_]+)=", raw, re.M):
        assert f"env: {var}" in help_text or var == "COFFER_LOG_FORMAT", f"{unit}: {var} is not a setting"
    with open(example, "rb") as f:
        settings = tomllib.load(f)
    for key in settings:
        assert f"--{key.replace('_', '-')}" in help_text, f"{example}: {key} is not a flag of {binary}"
    assert settings["data_dir"] in raw, "the unit must let the service write its data_dir"
