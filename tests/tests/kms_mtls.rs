//! Mutual TLS on the KMS, with real processes: a KMS started with `--require-client-cert`
//! refuses a client without a certificate and one whose certificate another CA issued, and
//! accepts the certificate `admin client create --client-cert-out` issued; the storage node
//! presents it with `--kms-client-cert/--kms-client-key`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use coffer_common::credential::Credential;
use coffer_common::secret_file::write_new_secret_file;
use coffer_tests::kms::{Kms, bin_dir};

fn pem_identity(crt: &Path, key: &Path) -> Vec<u8> {
    let mut pem = std::fs::read(crt).unwrap();
    pem.push(b'\n');
    pem.extend_from_slice(&std::fs::read(key).unwrap());
    pem
}

/// The coffer-storage binary (built once by cargo if needed).
fn storage_bin() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    if std::env::var("COFFER_BIN_DIR").is_err() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = std::process::Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "coffer-storage",
                "--bin",
                "coffer-storage",
            ])
            .current_dir(root)
            .status()
            .unwrap();
        assert!(ok.success(), "cargo build -p coffer-storage failed");
    }
    bin_dir().join("coffer-storage")
}

#[tokio::test]
async fn mtls_required_refuses_missing_and_foreign_certs_and_accepts_issued_ones() {
    let mut kms = Kms::init().await;
    kms.serve_args.push("--require-client-cert".into());
    kms.start().await;
    assert!(kms.url.starts_with("https://"), "{}", kms.url);

    // The admin CLI presents DATA_DIR/tls/admin-client.crt (the harness passes it).
    let prefix = kms.tmp.path().join("storage-1");
    let cred_path = kms.tmp.path().join("storage-1.credential");
    let out = kms
        .admin(&[
            "client",
            "create",
            "storage-1",
            "--buckets",
            "*",
            "--ops",
            "generate,unwrap",
            "--out",
            cred_path.to_str().unwrap(),
            "--client-cert-out",
            prefix.to_str().unwrap(),
        ])
        .await;
    assert!(
        out.status.success(),
        "client create failed:\n{}",
        kms.logs()
    );
    let cred = Credential::load(&cred_path).unwrap();
    let (crt, key) = (prefix.with_extension("crt"), prefix.with_extension("key"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "client key mode");

    // No certificate: the handshake fails, nothing reaches the API.
    let err = kms.client().generate(&cred, "b1").await.unwrap_err();
    assert_eq!(err.status, 0, "expected a transport failure, got {err:?}");

    // The issued certificate: accepted, and the token still decides.
    let good = kms.client_with(Some(&pem_identity(&crt, &key)));
    let k = good.generate(&cred, "b1").await.unwrap();
    good.unwrap(&cred, "b1", &k.wrapped_key, k.key_version)
        .await
        .unwrap();

    // A certificate from another CA (same common name): refused.
    let other_ca = coffer_common::tls::generate_ca().unwrap();
    let foreign = coffer_common::tls::issue_client_cert(&other_ca.key_pem, "storage-1").unwrap();
    let mut pem = foreign.cert_pem.clone().into_bytes();
    pem.extend_from_slice(foreign.key_pem.as_bytes());
    let err = kms
        .client_with(Some(&pem))
        .generate(&cred, "b1")
        .await
        .unwrap_err();
    assert_eq!(err.status, 0, "expected a transport failure, got {err:?}");

    // Issuance is audited; unknown identities get no certificate.
    let out = kms
        .admin(&[
            "client",
            "certificate",
            "nobody",
            "--out",
            kms.tmp.path().join("nobody").to_str().unwrap(),
        ])
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));
    let out = kms
        .admin(&["audit", "query", "--op", "client.certificate"])
        .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");

    // The storage node presents the certificate (start-up probe of the KMS).
    let storage = storage_bin();
    let secret = kms.tmp.path().join("s3.secret");
    write_new_secret_file(&secret, b"storage-secret-key").unwrap();
    let check = |with_cert: bool| {
        let mut cmd = std::process::Command::new(&storage);
        cmd.args(["serve", "--check", "--access-key", "AKIATEST"])
            .arg("--secret-key-file")
            .arg(&secret)
            .arg("--data-dir")
            .arg(kms.tmp.path().join("storage-data"))
            .args(["--kms-url", &kms.url])
            .arg("--kms-credential")
            .arg(&cred_path)
            .arg("--kms-ca")
            .arg(kms.ca_cert())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        if with_cert {
            cmd.arg("--kms-client-cert")
                .arg(&crt)
                .arg("--kms-client-key")
                .arg(&key);
        }
        let o = cmd.output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (ok, stderr) = check(true);
    assert!(
        ok && stderr.contains("KMS reachable and trusted"),
        "{stderr}"
    );
    let (_, stderr) = check(false);
    assert!(!stderr.contains("KMS reachable and trusted"), "{stderr}");
}

#[tokio::test]
async fn init_without_certs_needs_explicit_tls_or_insecure_http() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let pass = tmp.path().join("p");
    write_new_secret_file(&pass, b"some passphrase").unwrap();
    let kms = bin_dir().join("coffer-kms");
    let run = |args: &[&str]| {
        std::process::Command::new(&kms)
            .args(args)
            .env_remove("COFFER_KMS_PASSPHRASE")
            .output()
            .unwrap()
    };
    let (d, p) = (data.to_str().unwrap(), pass.to_str().unwrap());
    let o = run(&[
        "init",
        "--data-dir",
        d,
        "--passphrase-file",
        p,
        "--argon2",
        "dev",
        "--no-tls-certs",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!data.join("tls").exists());
    let o = run(&[
        "serve",
        "--data-dir",
        d,
        "--passphrase-file",
        p,
        "--no-mlock",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no TLS certificate") && err.contains("--insecure-http"),
        "{err}"
    );
    // A bad SAN fails before anything is written.
    let data2 = tmp.path().join("d2");
    let o = run(&[
        "init",
        "--data-dir",
        data2.to_str().unwrap(),
        "--passphrase-file",
        p,
        "--argon2",
        "dev",
        "--tls-san",
        "not a name!",
    ]);
    assert!(!o.status.success());
    assert!(!data2.join("kms.db").exists());
}

#[tokio::test]
async fn offline_ca_key_keeps_mtls_and_refuses_issuing_before_creating() {
    let mut kms = Kms::init().await;
    // The operator moved the CA key off the KMS host; tls/ca.pem stays.
    std::fs::remove_file(kms.data_dir.join("tls").join("ca.key")).unwrap();
    kms.serve_args.push("--require-client-cert".into());
    kms.start().await;
    let prefix = kms.tmp.path().join("s1");
    let cred = kms.tmp.path().join("s1.credential");
    let out = kms
        .admin(&[
            "client",
            "create",
            "s1",
            "--buckets",
            "*",
            "--ops",
            "generate",
            "--out",
            cred.to_str().unwrap(),
            "--client-cert-out",
            prefix.to_str().unwrap(),
        ])
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing was created"), "{err}");
    assert!(!cred.exists());
    let list = kms.admin(&["client", "list"]).await;
    assert!(list.status.success(), "{}", kms.logs());
    assert!(!String::from_utf8_lossy(&list.stdout).contains("\"s1\""));
}
