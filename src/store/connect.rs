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

use std::sync::Arc;

use anyhow::Context;
use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use crate::config::database::{parse, redact, SslMode, Target};
use crate::config::SettingError;
use crate::tls;

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
    fn a_database_is_named_before_the_parameters() {
        assert_eq!(with_database("postgres://h:1/", "db"), "postgres://h:1/db");
        assert_eq!(
            with_database("postgres://h:1?sslmode=disable", "db"),
            "postgres://h:1/db?sslmode=disable"
        );
    }
}
