//! `DATABASE_URL`: its form and libpq's TLS parameters (`sslmode`, `sslrootcert`), parsed and
//! checked at start, so a bad setting is named before anything connects (`store::connect`
//! connects with what [`parse`] gives).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::tls;

/// `url` with any password replaced by `***`, for logs and errors.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(parts) => parts,
        None => return url.to_owned(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

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
    fn a_missing_root_certificate_file_is_named() {
        let err = validate("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
            .expect_err("invalid");
        assert!(
            err.contains("DATABASE_URL: sslrootcert: cannot read /nonexistent/ca.pem"),
            "{err}"
        );
    }
}
