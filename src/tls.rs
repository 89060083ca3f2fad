//! TLS for PostgreSQL and Redis: rustls with the ring provider, trusting either the system's
//! roots (rustls-native-certs: the platform store, or `SSL_CERT_FILE`) or the roots of a PEM file
//! the settings name (`sslrootcert` in `DATABASE_URL`, `REDIS_CA_CERT`).
//!
//! A certificate that does not verify is a setting the operator must fix, not a passing fault:
//! [`certificate_problem`] finds it in an error's chain so the service can stop at start with
//! exit status 2 and a message naming the setting ([`crate::config::SettingError`]).

use std::path::Path;
use std::sync::{Arc, Once};

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// The crypto provider, installed once per process (rustls needs one chosen when several could
/// be compiled in).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The certificates of a PEM file; an error names the file and what is wrong.
pub fn read_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// Roots to trust: those of `pem` when given, else the system's.
pub fn roots(pem: Option<&Path>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match pem {
        Some(path) => {
            for cert in read_pem(path)? {
                store.add(cert).map_err(|e| {
                    format!("{}: not a usable root certificate: {e}", path.display())
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "no system root certificates found (install ca-certificates or set SSL_CERT_FILE)"
                        .into(),
                );
            }
        }
    }
    Ok(store)
}

/// The system's roots as PEM text (for clients that take roots as PEM), or `None` when there
/// are none.
pub fn system_roots_pem() -> Option<Vec<u8>> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for cert in found.certs {
        out.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        for line in b64.as_bytes().chunks(64) {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    Some(out)
}

/// Why a TLS peer's certificate was refused, if that is what `e` (or anything in its chain)
/// says.
pub fn certificate_problem(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            if let Some(why) = rustls_certificate_problem(r) {
                return Some(why);
            }
        }
        // io::Error hides its payload from `source()`.
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                if let Some(why) = rustls_certificate_problem(r) {
                    return Some(why);
                }
            }
        }
        let text = err.to_string();
        if text.contains("invalid peer certificate") {
            return Some(text);
        }
        next = err.source();
    }
    None
}

fn rustls_certificate_problem(e: &rustls::Error) -> Option<String> {
    match e {
        rustls::Error::InvalidCertificate(c) => Some(format!("invalid peer certificate: {c:?}")),
        rustls::Error::NoCertificatesPresented => {
            Some("the server presented no certificate".into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_error_is_found_behind_io_errors() {
        let inner = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, inner);
        let wrapped = anyhow::Error::new(io).context("connecting");
        let found = wrapped.chain().find_map(certificate_problem);
        assert_eq!(
            found.as_deref(),
            Some("invalid peer certificate: UnknownIssuer")
        );
        assert!(certificate_problem(&std::io::Error::other("refused")).is_none());
    }
}
