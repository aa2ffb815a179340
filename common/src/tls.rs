//! TLS material for both daemons: a local CA, server and client certificates issued by it
//! (rcgen), and rustls server configurations loaded from PEM files.
//!
//! Secret: private keys (CA, server, client). They are returned as PEM strings wrapped in
//! `Zeroizing` and written only through `secret_file` (mode 0600); key files are refused at
//! load time when others can read them.

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use zeroize::Zeroizing;

use crate::secret_file::{SecretFileError, read_secret_file};

/// Why TLS material could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error(transparent)]
    SecretFile(#[from] SecretFileError),
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error("TLS configuration is invalid: {0}")]
    Config(String),
}

/// A certificate and its private key, PEM.
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
}

const CA_NAME: &str = "Coffer local CA";

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    dn.push(DnType::OrganizationName, "Coffer");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    p
}

fn rcgen_err(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

/// A new local certificate authority.
pub fn generate_ca() -> Result<CertAndKey, TlsError> {
    let key = KeyPair::generate().map_err(rcgen_err)?;
    let cert = ca_params().self_signed(&key).map_err(rcgen_err)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

fn issuer(ca_key_pem: &str) -> Result<(rcgen::Certificate, KeyPair), TlsError> {
    let key = KeyPair::from_pem(ca_key_pem).map_err(rcgen_err)?;
    // Re-creating the CA certificate from the same name and key gives the same issuer name and
    // key identifier, so certificates it signs chain to the CA certificate written at init.
    let cert = ca_params().self_signed(&key).map_err(rcgen_err)?;
    Ok((cert, key))
}

/// A server certificate for `names` (DNS names or IP addresses), signed by the CA.
pub fn issue_server_cert(ca_key_pem: &str, names: &[String]) -> Result<CertAndKey, TlsError> {
    let (ca, ca_key) = issuer(ca_key_pem)?;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err)?;
    p.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(rcgen_err),
        })
        .collect::<Result<_, _>>()?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_else(|| "localhost".into()),
    );
    p.distinguished_name = dn;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(825);
    let key = KeyPair::generate().map_err(rcgen_err)?;
    let cert = p.signed_by(&key, &ca, &ca_key).map_err(rcgen_err)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

/// A client certificate (for mutual TLS) with common name `name`, signed by the CA.
pub fn issue_client_cert(ca_key_pem: &str, name: &str) -> Result<CertAndKey, TlsError> {
    let (ca, ca_key) = issuer(ca_key_pem)?;
    let key = KeyPair::generate().map_err(rcgen_err)?;
    let cert = client_params(name)?
        .signed_by(&key, &ca, &ca_key)
        .map_err(rcgen_err)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

/// A P-256 public key given as its uncompressed point (the only key type client certificates
/// are issued for).
struct P256PublicKey<'a>(&'a [u8]);

impl rcgen::PublicKeyData for P256PublicKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// A client key pair for mutual TLS: the private key (PEM) and the public key as the
/// uncompressed P-256 point that [`issue_client_cert_for_key`] takes.
pub fn generate_client_key() -> Result<(Zeroizing<String>, Vec<u8>), TlsError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rcgen_err)?;
    Ok((
        Zeroizing::new(key.serialize_pem()),
        key.public_key_raw().to_vec(),
    ))
}

/// A client certificate (PEM) with common name `name` for a P-256 public key (uncompressed
/// point, 65 bytes) whose private key the caller keeps; signed by the CA.
pub fn issue_client_cert_for_key(
    ca_key_pem: &str,
    name: &str,
    public_key: &[u8],
) -> Result<String, TlsError> {
    if public_key.len() != 65 || public_key.first() != Some(&4) {
        return Err(TlsError::Generate(
            "public key must be an uncompressed P-256 point (65 bytes)".into(),
        ));
    }
    let (ca, ca_key) = issuer(ca_key_pem)?;
    let cert = client_params(name)?
        .signed_by(&P256PublicKey(public_key), &ca, &ca_key)
        .map_err(rcgen_err)?;
    Ok(cert.pem())
}

fn client_params(name: &str) -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(825);
    Ok(p)
}

fn read_public(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn certs(
    pem: &[u8],
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    let list = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    if list.is_empty() {
        return Err(TlsError::Read {
            path: path.display().to_string(),
            message: "no certificate in file".into(),
        });
    }
    Ok(list)
}

/// Install ring as the process-wide rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A rustls server configuration from a certificate chain file and a key file (0600), with
/// client certificates required and verified against `client_ca` when given (mutual TLS).
pub fn load_server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    install_crypto_provider();
    let chain = certs(&read_public(cert)?, cert)?;
    let key_pem = Zeroizing::new(read_secret_file(key)?);
    let key_der = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| TlsError::Read {
            path: key.display().to_string(),
            message: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Read {
            path: key.display().to_string(),
            message: "no private key in file".into(),
        })?;
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        Some(ca_path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(&read_public(ca_path)?, ca_path)? {
                roots.add(c).map_err(|e| TlsError::Config(e.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret_file::write_new_secret_file;

    #[test]
    fn issued_server_cert_loads_and_reissued_ca_signs_compatible_certs() {
        let dir = std::env::temp_dir().join(format!("coffer-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = generate_ca().unwrap();
        let server =
            issue_server_cert(&ca.key_pem, &["localhost".into(), "127.0.0.1".into()]).unwrap();
        std::fs::write(dir.join("ca.pem"), &ca.cert_pem).unwrap();
        std::fs::write(dir.join("server.pem"), &server.cert_pem).unwrap();
        write_new_secret_file(&dir.join("server.key"), server.key_pem.as_bytes()).unwrap();
        assert!(load_server_config(&dir.join("server.pem"), &dir.join("server.key"), None).is_ok());
        assert!(
            load_server_config(
                &dir.join("server.pem"),
                &dir.join("server.key"),
                Some(&dir.join("ca.pem"))
            )
            .is_ok()
        );
        // A key file others can read is refused.
        std::fs::write(dir.join("open.key"), server.key_pem.as_bytes()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("open.key"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        assert!(load_server_config(&dir.join("server.pem"), &dir.join("open.key"), None).is_err());
        assert!(issue_client_cert(&ca.key_pem, "storage").is_ok());
        let (_key, public) = generate_client_key().unwrap();
        assert!(issue_client_cert_for_key(&ca.key_pem, "storage", &public).is_ok());
        assert!(issue_client_cert_for_key(&ca.key_pem, "storage", &public[1..]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
