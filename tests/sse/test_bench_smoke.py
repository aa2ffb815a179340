"""Smoke run of the benchmark tool (coffer-bench) against a real node and KMS: tiny sizes, each
mode, multipart and ranged GETs, JSON output parsed. No timing assertions."""

import json
import subprocess

from .harness import ACCESS_KEY, SECRET_KEY, _bin


def run_bench(args):
    out = subprocess.run([_bin("coffer-bench"), "--json", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_bench_s3_all_modes_multipart_and_ranges(node):
    common = ["s3", "--endpoint", node.url, "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY, "--quiet"]
    rows = run_bench(common + ["--bucket", "bench-smoke", "--size", "70000", "--count", "6", "--concurrency", "2",
                               "--range", "1000"])
    by = {(r["mode"], r["op"]): r for r in rows}
    for mode in ("plain", "sse-s3", "sse-c"):
        for op in ("PUT", "GET"):
            r = by[(mode, op)]
            assert r["ops"] == 6 and r["errors"] == 0, r
        assert by[(mode, "GET")]["bytes"] == 6 * 1000  # ranged GETs return exactly the range
        assert by[(mode, "PUT")]["bytes"] == 6 * 70000
    rows = run_bench(common + ["--bucket", "bench-smoke-mp", "--size", "11m", "--count", "1", "--concurrency", "1",
                               "--multipart", "5m", "--modes", "sse-c"])
    assert [(r["op"], r["ops"], r["errors"], r["bytes"]) for r in rows] == [("PUT", 1, 0, 11 << 20), ("GET", 1, 0, 11 << 20)]


def test_bench_rounds_and_get_only(node, tmp_path):
    common = ["s3", "--endpoint", node.url, "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY, "--quiet",
              "--bucket", "bench-smoke-rounds", "--size", "5000", "--count", "3", "--concurrency", "2",
              "--sse-c-key-file", str(tmp_path / "ssec.key")]
    rows = run_bench(common + ["--rounds", "2", "--modes", "plain,sse-c"])
    # One median row per (mode, op), in first-seen order, not one per round.
    assert [(r["mode"], r["op"], r["ops"], r["errors"]) for r in rows] == [
        ("plain", "PUT", 3, 0), ("plain", "GET", 3, 0), ("sse-c", "PUT", 3, 0), ("sse-c", "GET", 3, 0)]
    assert (tmp_path / "ssec.key").stat().st_size == 32
    # A GET-only run reads the objects back, SSE-C ones with the key kept in the file.
    rows = run_bench(common + ["--get-only", "--modes", "plain,sse-c"])
    assert [(r["mode"], r["op"], r["ops"], r["errors"], r["bytes"]) for r in rows] == [
        ("plain", "GET", 3, 0, 15000), ("sse-c", "GET", 3, 0, 15000)]


def test_bench_kms_unwrap(kms):
    rows = run_bench(["kms", "--url", kms.url, "--credential", str(kms.credential), "--count", "200",
                      "--concurrency", "4", "--quiet"])
    assert rows[0]["op"] == "unwrap" and rows[0]["ops"] == 200 and rows[0]["errors"] == 0
    assert rows[0]["p50_ms"] > 0
    rows = run_bench(["kms", "--url", kms.url, "--credential", str(kms.credential), "--count", "50",
                      "--concurrency", "4", "--quiet", "--ops", "generate,unwrap"])
    assert [(r["op"], r["ops"], r["errors"]) for r in rows] == [("generate", 50, 0), ("unwrap", 50, 0)]
