//! The one place that opens PostgreSQL connections (the pool, migrations, `status`, `verify`,
//! `replay`, `bench`, the health check): `DATABASE_URL` with libpq's TLS parameters.
//!
//! - `sslmode=disable` — no TLS;
//! - `prefer` (the default, as in libpq) — TLS when the server offers it, certificate not checked;
//! - `require` — TLS or fail, certificate not checked (checked as `verify-ca` when `sslrootcert`
//!   is given, as libpq does);
//! - `verify-ca` — TLS, the certificate must chain to a trusted root;
//! - `verify-full` — and name the host of the URL.
//!
//! `sslrootcert=<PEM file>` names the roots to trust; without it the system's roots are used.
//! A certificate that does not verify under `verify-*` is never downgraded: the connection fails
//! with a [`SettingError`] naming `DATABASE_URL` and the reason.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use super::redact;
use crate::config::SettingError;
use crate::tls;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            // libpq's `allow` tries without TLS first; without TLS first is what `prefer` falls
            // back to, so there is nothing `allow` would add but a weaker default.
            other => {
                return Err(format!(
                    "DATABASE_URL: sslmode must be disable, prefer, require, verify-ca or verify-full, got {other:?}"
                ))
            }
        })
    }
}

/// A parsed `DATABASE_URL`.
#[derive(Debug, Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

/// Parses `url`, taking out the TLS parameters tokio-postgres does not know.
pub fn parse(url: &str) -> Result<Target, String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut mode = SslMode::Prefer;
    let mut root_cert = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => mode = v.parse()?,
            "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(v))),
            _ => rest.push(pair),
        }
    }
    let cleaned = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    let mut config = tokio_postgres::Config::from_str(&cleaned)
        .map_err(|e| format!("DATABASE_URL: {e} ({})", redact(url)))?;
    if root_cert.is_some() && matches!(mode, SslMode::Require) {
        mode = SslMode::VerifyCa;
    }
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    Ok(Target {
        config,
        mode,
        root_cert,
    })
}

/// `%2F` and friends in a query value (file paths).
fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&v[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks `url` at start: its form, `sslmode`, and that `sslrootcert` is a readable PEM file.
pub fn validate(url: &str) -> Result<(), String> {
    let target = parse(url)?;
    if let Some(path) = &target.root_cert {
        tls::read_pem(path).map_err(|e| format!("DATABASE_URL: sslrootcert: {e}"))?;
    }
    Ok(())
}

/// The connection of a tokio-postgres client opened by [`open`].
type PgConnection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
        tokio_postgres::Socket,
    >>::Stream,
>;

/// Connects to `url`. One path for every `sslmode`: with `disable` tokio-postgres never asks
/// for TLS, so the rustls connector is simply not used.
async fn open(url: &str) -> anyhow::Result<(tokio_postgres::Client, PgConnection)> {
    let target = parse(url).map_err(SettingError::new)?;
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_config(&target)?);
    target
        .config
        .connect(tls)
        .await
        .map_err(|e| connect_error(url, e))
}

/// Opens a connection to `url`.
pub async fn connect(url: &str) -> anyhow::Result<AsyncPgConnection> {
    let (client, conn) = open(url).await?;
    AsyncPgConnection::try_from_client_and_connection(client, conn)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))
}

/// A plain tokio-postgres client for `url`, with the same TLS rules (the bench's `COPY`, which
/// diesel-async cannot do); its connection runs on a task of its own.
pub async fn client(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = open(url).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// `server` (a URL without a database, perhaps with `?…` parameters) naming `database`.
pub fn with_database(server: &str, database: &str) -> String {
    match server.split_once('?') {
        Some((base, query)) => format!("{}/{database}?{query}", base.trim_end_matches('/')),
        None => format!("{}/{database}", server.trim_end_matches('/')),
    }
}

/// A connection failure: a certificate that does not verify is a setting to fix.
fn connect_error(url: &str, e: tokio_postgres::Error) -> anyhow::Error {
    match tls::certificate_problem(&e) {
        Some(why) => SettingError::new(format!(
            "DATABASE_URL: the server's TLS certificate did not verify ({why}) — connecting to {}",
            redact(url)
        ))
        .into(),
        None => anyhow::Error::new(e).context(format!("connecting to {}", redact(url))),
    }
}

/// The `custom_setup` of the pool's connection manager: every pooled connection is opened by
/// [`connect`].
pub fn setup(
    url: &str,
) -> futures_util::future::BoxFuture<'_, diesel::ConnectionResult<AsyncPgConnection>> {
    Box::pin(async move {
        connect(url)
            .await
            .map_err(|e| ConnectionError::BadConnection(format!("{e:#}")))
    })
}

fn client_config(target: &Target) -> anyhow::Result<rustls::ClientConfig> {
    let provider = tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let verifier: Arc<dyn ServerCertVerifier> = match target.mode {
        // `disable`: never used (no TLS is negotiated).
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(Unverified(provider)),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = tls::roots(target.root_cert.as_deref())
                .map_err(|e| SettingError::new(format!("DATABASE_URL: sslrootcert: {e}")))?;
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("building the certificate verifier")?;
            if target.mode == SslMode::VerifyCa {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `prefer` and `require`: encryption without checking who the server is (libpq's semantics);
/// handshake signatures are still checked.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_and_understood() {
        let t = parse("postgres://u:p@db.example:6543/app?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x").expect("valid");
        assert_eq!(t.mode, SslMode::VerifyFull);
        assert_eq!(
            t.root_cert.as_deref(),
            Some(std::path::Path::new("/tmp/ca.pem"))
        );
        assert_eq!(t.config.get_application_name(), Some("x"));
        assert_eq!(t.config.get_dbname(), Some("app"));
        assert_eq!(
            parse("postgres://h/db").expect("valid").mode,
            SslMode::Prefer
        );
        assert_eq!(
            parse("postgres://h/db?sslmode=require&sslrootcert=/ca.pem")
                .expect("valid")
                .mode,
            SslMode::VerifyCa,
            "libpq: require with a root certificate verifies the chain"
        );
        let err = parse("postgres://h/db?sslmode=maybe").expect_err("invalid");
        assert!(err.starts_with("DATABASE_URL: sslmode must be"), "{err}");
    }

    #[test]
    fn a_database_is_named_before_the_parameters() {
        assert_eq!(with_database("postgres://h:1/", "db"), "postgres://h:1/db");
        assert_eq!(
            with_database("postgres://h:1?sslmode=disable", "db"),
            "postgres://h:1/db?sslmode=disable"
        );
    }

    #[test]
    fn a_missing_root_certificate_file_is_named() {
        let err = validate("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
            .expect_err("invalid");
        assert!(
            err.contains("DATABASE_URL: sslrootcert: cannot read /nonexistent/ca.pem"),
            "{err}"
        );
    }
}
