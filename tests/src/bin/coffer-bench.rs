//! coffer-bench: load generator for any S3 endpoint (SigV4, plaintext / SSE-S3 / SSE-C, PUT and
//! GET, optional ranged GETs) and for the Coffer KMS service API (generate / unwrap with signed
//! tokens). Reports MB/s, ops/s and latency percentiles as a table or JSON, and the peak RSS of
//! a process (`--pid`, e.g. the storage node) read from /proc.
//!
//! Secret: the S3 secret key and the KMS credential (read from env/files, never printed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Parser, Subcommand, ValueEnum};
use coffer_tests::sigv4::Signer;
use futures::StreamExt;
use md5::Digest;

#[derive(Parser)]
#[command(about = "Benchmark an S3 endpoint or the Coffer KMS")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// PUT then GET objects on an S3 endpoint.
    S3(S3Args),
    /// Generate / unwrap data keys on a Coffer KMS.
    Kms(KmsArgs),
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Mode {
    Plain,
    SseS3,
    SseC,
    /// SSE-KMS, one data key per object (`aws:kms`).
    SseKms,
    /// SSE-KMS with `x-amz-server-side-encryption-bucket-key-enabled: true`.
    SseKmsBk,
}

#[derive(clap::Args)]
struct S3Args {
    #[arg(long, env = "ENDPOINT")]
    endpoint: String,
    #[arg(long, env = "ACCESS_KEY")]
    access_key: String,
    #[arg(long, env = "SECRET_KEY", hide_env_values = true)]
    secret_key: String,
    #[arg(long, default_value = "us-east-1")]
    region: String,
    #[arg(long, default_value = "coffer-bench")]
    bucket: String,
    /// Object size in bytes (suffixes k, m, g = KiB, MiB, GiB).
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    size: u64,
    /// Objects per mode.
    #[arg(long, default_value_t = 100)]
    count: u64,
    /// Stop each phase after this many seconds even if `count` is not reached.
    #[arg(long)]
    duration: Option<f64>,
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Modes to run, in one run for comparable ratios.
    #[arg(long, value_delimiter = ',', default_value = "plain,sse-s3,sse-c")]
    modes: Vec<Mode>,
    /// GET only this many bytes from a random offset (ranged GETs).
    #[arg(long, value_parser = parse_size)]
    range: Option<u64>,
    /// PUT as multipart with parts of this size.
    #[arg(long, value_parser = parse_size)]
    multipart: Option<u64>,
    /// Repeat the modes this many times, interleaved (plain, sse-s3, sse-c, plain, ...), and
    /// report each phase's median round by throughput: on a shared machine one round's ratios
    /// are noise.
    #[arg(long, default_value_t = 1)]
    rounds: u64,
    /// SSE-C key: 32 bytes read from this file, or generated and written to it (so that a later
    /// `--get-only` run can read SSE-C objects back); random per run without it.
    #[arg(long)]
    sse_c_key_file: Option<std::path::PathBuf>,
    /// Skip the PUT phase and GET objects an earlier run with the same bucket, size and count
    /// wrote (to measure GETs alone).
    #[arg(long)]
    get_only: bool,
    /// Extra GET passes over the same objects (for cache behaviour).
    #[arg(long, default_value_t = 1)]
    get_passes: u64,
    /// KMS key (id, ARN or alias) for the sse-kms modes; without it the node's default.
    #[arg(long)]
    kms_key_id: Option<String>,
    /// PEM CA bundle for an https endpoint.
    #[arg(long, env = "CA_BUNDLE")]
    ca_file: Option<std::path::PathBuf>,
    /// Report this process's peak RSS (e.g. the storage node's pid).
    #[arg(long)]
    pid: Option<u32>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct KmsArgs {
    #[arg(long, env = "KMS_URL")]
    url: String,
    /// Service credential file (from `coffer-kms admin client create`).
    #[arg(long)]
    credential: std::path::PathBuf,
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[arg(long, default_value_t = 5000)]
    count: u64,
    #[arg(long, default_value = "bench-bucket")]
    bucket_id: String,
    /// Operations to measure, one phase each: `generate` (a new data key per call, registered
    /// and audited) and/or `unwrap`.
    #[arg(long, value_delimiter = ',', default_value = "unwrap")]
    ops: Vec<KmsOp>,
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum KmsOp {
    Generate,
    Unwrap,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1024),
        Some('m') => (&s[..s.len() - 1], 1024 * 1024),
        Some('g') => (&s[..s.len() - 1], 1024 * 1024 * 1024),
        _ => (s.as_str(), 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|e| e.to_string())
}

/// Latency samples and byte counts of one phase.
#[derive(serde::Serialize)]
struct PhaseReport {
    mode: String,
    op: String,
    ops: u64,
    errors: u64,
    bytes: u64,
    seconds: f64,
    mb_per_s: f64,
    ops_per_s: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx).copied().unwrap_or(0.0)
}

fn report(
    mode: &str,
    op: &str,
    mut lat: Vec<f64>,
    errors: u64,
    bytes: u64,
    secs: f64,
) -> PhaseReport {
    lat.sort_by(|a, b| a.total_cmp(b));
    let ops = lat.len() as u64;
    PhaseReport {
        mode: mode.into(),
        op: op.into(),
        ops,
        errors,
        bytes,
        seconds: secs,
        mb_per_s: bytes as f64 / 1e6 / secs.max(1e-9),
        ops_per_s: ops as f64 / secs.max(1e-9),
        p50_ms: percentile(&lat, 0.50),
        p90_ms: percentile(&lat, 0.90),
        p99_ms: percentile(&lat, 0.99),
    }
}

/// Run `count` jobs over `concurrency` workers; each job returns (latency ms, bytes) or an error.
async fn run_phase<F, Fut>(
    label: &str,
    count: u64,
    concurrency: usize,
    deadline: Option<Duration>,
    quiet: bool,
    job: F,
) -> (Vec<f64>, u64, u64, f64)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<u64>> + Send,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let progress = {
        let done = done.clone();
        let label = label.to_string();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if !quiet {
                    eprint!(
                        "\r{label}: {}/{count} ops, {:.1}s   ",
                        done.load(Ordering::Relaxed),
                        start.elapsed().as_secs_f64()
                    );
                }
            }
        })
    };
    let mut handles = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (job, next, done) = (job.clone(), next.clone(), done.clone());
        handles.push(tokio::spawn(async move {
            let (mut lat, mut bytes, mut errors) = (Vec::new(), 0u64, 0u64);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || deadline.is_some_and(|d| start.elapsed() >= d) {
                    break;
                }
                let t = Instant::now();
                match job(i).await {
                    Ok(b) => {
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                        bytes += b;
                    }
                    Err(e) => {
                        errors += 1;
                        if errors <= 3 {
                            eprintln!("\nerror: {e:#}");
                        }
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (lat, bytes, errors)
        }));
    }
    let (mut lat, mut bytes, mut errors) = (Vec::new(), 0, 0);
    for h in handles {
        if let Ok((l, b, e)) = h.await {
            lat.extend(l);
            bytes += b;
            errors += e;
        }
    }
    progress.abort();
    if !quiet {
        eprintln!();
    }
    (lat, bytes, errors, start.elapsed().as_secs_f64())
}

struct S3 {
    http: reqwest::Client,
    base: String,
    host: String,
    signer: Signer,
}

impl S3 {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(String, String)],
        mut headers: Vec<(String, String)>,
        body: Option<bytes::Bytes>,
    ) -> Result<reqwest::Response> {
        headers.sort();
        let sreq = coffer_tests::sigv4::Request {
            method: method.as_str(),
            host: &self.host,
            path,
            query,
            headers: &headers,
            payload_sha256: "UNSIGNED-PAYLOAD",
        };
        let signed = self.signer.sign(&sreq, time::OffsetDateTime::now_utc());
        let mut url = format!(
            "{}{}",
            self.base,
            coffer_tests::sigv4::uri_encode(path, true)
        );
        if !query.is_empty() {
            let q: Vec<String> = query
                .iter()
                .map(|(k, v)| {
                    if v.is_empty() {
                        k.clone()
                    } else {
                        format!("{k}={}", coffer_tests::sigv4::uri_encode(v, false))
                    }
                })
                .collect();
            url = format!("{url}?{}", q.join("&"));
        }
        let mut req = self.http.request(method, url);
        for (k, v) in signed {
            if k != "host" {
                req = req.header(k, v);
            }
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.context("request failed")?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            bail!(
                "HTTP {status}: {}",
                text.chars().take(300).collect::<String>()
            );
        }
        Ok(resp)
    }
}

fn sse_headers(mode: Mode, key: &[u8; 32], kms_key: Option<&str>) -> Vec<(String, String)> {
    let kms = |bucket_key: bool| {
        let mut h = vec![("x-amz-server-side-encryption".into(), "aws:kms".into())];
        if let Some(k) = kms_key {
            h.push((
                "x-amz-server-side-encryption-aws-kms-key-id".into(),
                k.to_string(),
            ));
        }
        if bucket_key {
            h.push((
                "x-amz-server-side-encryption-bucket-key-enabled".into(),
                "true".into(),
            ));
        }
        h
    };
    match mode {
        Mode::Plain => vec![],
        Mode::SseKms => kms(false),
        Mode::SseKmsBk => kms(true),
        Mode::SseS3 => vec![("x-amz-server-side-encryption".into(), "AES256".into())],
        Mode::SseC => vec![
            (
                "x-amz-server-side-encryption-customer-algorithm".into(),
                "AES256".into(),
            ),
            (
                "x-amz-server-side-encryption-customer-key".into(),
                STANDARD.encode(key),
            ),
            (
                "x-amz-server-side-encryption-customer-key-md5".into(),
                STANDARD.encode(md5::Md5::digest(key)),
            ),
        ],
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Plain => "plain",
        Mode::SseS3 => "sse-s3",
        Mode::SseC => "sse-c",
        Mode::SseKms => "sse-kms",
        Mode::SseKmsBk => "sse-kms-bk",
    }
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn http_client(ca_file: Option<&std::path::Path>) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .pool_max_idle_per_host(64);
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        for c in reqwest::Certificate::from_pem_bundle(&pem)? {
            b = b.add_root_certificate(c);
        }
    }
    Ok(b.build()?)
}

async fn put_object(
    s3: &S3,
    path: &str,
    headers: Vec<(String, String)>,
    data: bytes::Bytes,
    part: Option<u64>,
) -> Result<()> {
    let Some(part_size) = part.filter(|p| (*p as usize) < data.len()) else {
        s3.send(reqwest::Method::PUT, path, &[], headers, Some(data))
            .await?;
        return Ok(());
    };
    let create = s3
        .send(
            reqwest::Method::POST,
            path,
            &[("uploads".into(), String::new())],
            headers.clone(),
            None,
        )
        .await?
        .text()
        .await?;
    let upload_id = create
        .split("<UploadId>")
        .nth(1)
        .and_then(|s| s.split("</UploadId>").next())
        .context("no UploadId")?
        .to_string();
    let mut parts = String::new();
    let part_headers: Vec<_> = headers
        .into_iter()
        .filter(|(k, _)| k.starts_with("x-amz-server-side-encryption-customer"))
        .collect();
    for (i, chunk) in data.chunks(part_size as usize).enumerate() {
        let n = i + 1;
        let q = vec![
            ("partNumber".to_string(), n.to_string()),
            ("uploadId".to_string(), upload_id.clone()),
        ];
        let resp = s3
            .send(
                reqwest::Method::PUT,
                path,
                &q,
                part_headers.clone(),
                Some(data.slice_ref(chunk)),
            )
            .await?;
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        parts.push_str(&format!(
            "<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
        ));
    }
    let body = format!("<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>");
    s3.send(
        reqwest::Method::POST,
        path,
        &[("uploadId".into(), upload_id)],
        part_headers,
        Some(body.into()),
    )
    .await?;
    Ok(())
}

async fn bench_s3(a: S3Args) -> Result<Vec<PhaseReport>> {
    let url = reqwest::Url::parse(&a.endpoint).context("bad endpoint")?;
    let host = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    };
    let s3 = Arc::new(S3 {
        http: http_client(a.ca_file.as_deref())?,
        base: a.endpoint.trim_end_matches('/').to_string(),
        host,
        signer: Signer {
            access_key: a.access_key.clone(),
            secret_key: a.secret_key.clone(),
            region: a.region.clone(),
        },
    });
    let _ = s3
        .send(
            reqwest::Method::PUT,
            &format!("/{}", a.bucket),
            &[],
            vec![],
            None,
        )
        .await;
    let mut data = vec![0u8; a.size as usize];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut data);
    let data = bytes::Bytes::from(data);
    let key = sse_c_key(a.sse_c_key_file.as_deref())?;
    let deadline = a.duration.map(Duration::from_secs_f64);
    let mut reports = Vec::new();
    let rounds = (0..a.rounds.max(1)).flat_map(|_| a.modes.iter().copied());
    for mode in rounds {
        let name = mode_name(mode);
        let headers = sse_headers(mode, &key, a.kms_key_id.as_deref());
        let (s3c, hc, dc, bucket, mp) = (
            s3.clone(),
            headers.clone(),
            data.clone(),
            a.bucket.clone(),
            a.multipart,
        );
        let (lat, bytes, errors, secs) = run_phase(
            &format!("PUT {name}"),
            if a.get_only { 0 } else { a.count },
            a.concurrency,
            deadline,
            a.quiet,
            move |i| {
                let (s3, h, d, b) = (s3c.clone(), hc.clone(), dc.clone(), bucket.clone());
                async move {
                    let len = d.len() as u64;
                    put_object(&s3, &format!("/{b}/{name}/obj-{i}"), h, d, mp).await?;
                    Ok(len)
                }
            },
        )
        .await;
        let written = if a.get_only {
            a.count
        } else {
            lat.len() as u64
        };
        if !a.get_only {
            reports.push(report(name, "PUT", lat, errors, bytes, secs));
        }
        let get_headers: Vec<_> = headers
            .into_iter()
            .filter(|(k, _)| k.starts_with("x-amz-server-side-encryption-customer"))
            .collect();
        for pass in 0..a.get_passes {
            let (s3c, hc, bucket, size, range) = (
                s3.clone(),
                get_headers.clone(),
                a.bucket.clone(),
                a.size,
                a.range,
            );
            let n = written.max(1);
            let (lat, bytes, errors, secs) = run_phase(
                &format!("GET {name}"),
                n,
                a.concurrency,
                deadline,
                a.quiet,
                move |i| {
                    let (s3, mut h, b) = (s3c.clone(), hc.clone(), bucket.clone());
                    async move {
                        if let Some(r) = range.filter(|r| *r < size) {
                            let off = rand::Rng::gen_range(&mut rand::thread_rng(), 0..=size - r);
                            h.push(("range".into(), format!("bytes={off}-{}", off + r - 1)));
                        }
                        let resp = s3
                            .send(
                                reqwest::Method::GET,
                                &format!("/{b}/{name}/obj-{i}"),
                                &[],
                                h,
                                None,
                            )
                            .await?;
                        let mut stream = resp.bytes_stream();
                        let mut got = 0u64;
                        while let Some(chunk) = stream.next().await {
                            got += chunk?.len() as u64;
                        }
                        Ok(got)
                    }
                },
            )
            .await;
            let op = if a.get_passes > 1 {
                format!("GET#{}", pass + 1)
            } else {
                "GET".into()
            };
            reports.push(report(name, &op, lat, errors, bytes, secs));
        }
    }
    let mut reports = median_rounds(reports);
    if let Some(pid) = a.pid
        && let Some(kib) = peak_rss_kib(pid)
    {
        eprintln!("peak RSS of pid {pid}: {:.1} MiB", kib as f64 / 1024.0);
        reports.push(PhaseReport {
            mode: format!("pid {pid}"),
            op: "peak-rss-MiB".into(),
            ops: 0,
            errors: 0,
            bytes: kib * 1024,
            seconds: 0.0,
            mb_per_s: kib as f64 / 1024.0,
            ops_per_s: 0.0,
            p50_ms: 0.0,
            p90_ms: 0.0,
            p99_ms: 0.0,
        });
    }
    Ok(reports)
}

async fn bench_kms(a: KmsArgs) -> Result<Vec<PhaseReport>> {
    let cred = Arc::new(coffer_common::credential::Credential::load(&a.credential)?);
    let http = http_client(a.ca_file.as_deref())?;
    let base = a.url.trim_end_matches('/').to_string();
    let gen_path = coffer_common::kms_api::PATH_GENERATE;
    let unwrap_path = coffer_common::kms_api::PATH_UNWRAP;
    let resp: coffer_common::kms_api::GenerateDataKeyResponse = http
        .post(format!("{base}{gen_path}"))
        .bearer_auth(cred.token("POST", gen_path))
        .json(&coffer_common::kms_api::GenerateDataKeyRequest {
            bucket_id: a.bucket_id.clone(),
        })
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    // The body and URL are the same for every call: serialize and parse them once, so that the
    // client's CPU (which shares the cores with the KMS) goes to what each call needs: a freshly
    // signed token and the request itself.
    let body = bytes::Bytes::from(serde_json::to_vec(
        &coffer_common::kms_api::UnwrapDataKeyRequest {
            bucket_id: a.bucket_id.clone(),
            wrapped_key: resp.wrapped_key.clone(),
            key_version: resp.key_version,
        },
    )?);
    let gen_body = bytes::Bytes::from(serde_json::to_vec(
        &coffer_common::kms_api::GenerateDataKeyRequest {
            bucket_id: a.bucket_id.clone(),
        },
    )?);
    let mut reports = Vec::new();
    for op in &a.ops {
        let (name, path, body) = match op {
            KmsOp::Generate => ("generate", gen_path, gen_body.clone()),
            KmsOp::Unwrap => ("unwrap", unwrap_path, body.clone()),
        };
        let url = reqwest::Url::parse(&format!("{base}{path}"))?;
        let (http, cred) = (http.clone(), cred.clone());
        let (lat, _bytes, errors, secs) = run_phase(
            &format!("KMS {name}"),
            a.count,
            a.concurrency,
            None,
            a.quiet,
            move |_| {
                let (http, cred, body, url) =
                    (http.clone(), cred.clone(), body.clone(), url.clone());
                async move {
                    http.post(url)
                        .bearer_auth(cred.token("POST", path))
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body)
                        .send()
                        .await?
                        .error_for_status()?;
                    Ok(0)
                }
            },
        )
        .await;
        reports.push(report("kms", name, lat, errors, 0, secs));
    }
    Ok(reports)
}

fn sse_c_key(file: Option<&std::path::Path>) -> Result<[u8; 32]> {
    if let Some(f) = file
        && f.exists()
    {
        let bytes = std::fs::read(f).context("reading the SSE-C key file")?;
        return <[u8; 32]>::try_from(bytes.as_slice()).context("an SSE-C key file holds 32 bytes");
    }
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut key);
    if let Some(f) = file {
        std::fs::write(f, key).context("writing the SSE-C key file")?;
    }
    Ok(key)
}

/// One report per (mode, op): the round with the median throughput (the lower median for an
/// even count), in first-seen order.
fn median_rounds(all: Vec<PhaseReport>) -> Vec<PhaseReport> {
    let mut groups: Vec<Vec<PhaseReport>> = Vec::new();
    for r in all {
        match groups
            .iter_mut()
            .find(|g| g.first().is_some_and(|f| f.mode == r.mode && f.op == r.op))
        {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
        .into_iter()
        .filter_map(|mut g| {
            g.sort_by(|a, b| a.mb_per_s.total_cmp(&b.mb_per_s));
            let mid = (g.len() - 1) / 2;
            g.into_iter().nth(mid)
        })
        .collect()
}

fn print_table(reports: &[PhaseReport]) {
    println!(
        "{:<10} {:<14} {:>8} {:>7} {:>10} {:>10} {:>9} {:>9} {:>9}",
        "mode", "op", "ops", "errors", "MB/s", "ops/s", "p50 ms", "p90 ms", "p99 ms"
    );
    for r in reports {
        println!(
            "{:<10} {:<14} {:>8} {:>7} {:>10.1} {:>10.1} {:>9.2} {:>9.2} {:>9.2}",
            r.mode, r.op, r.ops, r.errors, r.mb_per_s, r.ops_per_s, r.p50_ms, r.p90_ms, r.p99_ms
        );
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    coffer_common::tls::install_crypto_provider();
    let cli = Cli::parse();
    let reports = match cli.cmd {
        Cmd::S3(a) => bench_s3(a).await?,
        Cmd::Kms(a) => bench_kms(a).await?,
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print_table(&reports);
    }
    if reports.iter().any(|r| r.errors > 0) {
        bail!("some operations failed");
    }
    Ok(())
}
