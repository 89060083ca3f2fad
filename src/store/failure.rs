//! Failure classes (SPEC §4 "no input stops the service"): every error that reaches the pipeline
//! is either **transient** — the database or Redis is unreachable, slow or busy, and the same
//! work will succeed later (retry, back off, breaker, nothing acknowledged) — or a **rejection** of
//! the data — Postgres refused what we asked it to store and will refuse it again (isolate the
//! entries at fault, dead-letter them, commit the rest).
//!
//! Postgres says which with its SQLSTATE. diesel keeps only part of it: the integrity classes it
//! names ([`DatabaseErrorKind`]) and, for everything else, `Unknown` with the server's message.
//! So: a server error diesel names as an integrity violation is a rejection; one it names as a
//! serialization failure, a closed connection or a send failure is transient; an `Unknown` server
//! error is transient when its message is one of the transient conditions below (deadlock, lock
//! or statement timeout, cancel, shutdown, out of memory or disk, too many connections) and a
//! rejection otherwise — a data exception (class 22), a program limit (54) or anything else the
//! server answers to a statement it could parse and run. A rejection is only ever acted on one
//! entry at a time (`sync::isolate`), after the same work without that entry committed, so a
//! misread transient error costs at most a dead letter that `dlq reinject` brings back.
//! Everything that is not a server's answer (I/O, pool and operation time-outs, Redis) is
//! transient.

use std::future::Future;
use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// What to do about a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Retry later; acknowledge nothing.
    Transient,
    /// The data was refused and will be refused again: isolate it and dead-letter it.
    Rejected,
}

/// Server messages (lower case prefixes) of conditions that pass: the SQLSTATE classes 40
/// (deadlock), 53 (insufficient resources), 55P03 (lock not available), 57 (operator
/// intervention: cancel, statement timeout, shutdown) and 08 (connection), as PostgreSQL words
/// them.
const TRANSIENT_MESSAGES: &[&str] = &[
    "deadlock detected",
    "could not serialize access",
    "could not obtain lock",
    "canceling statement due to",
    "terminating connection",
    "the database system is",
    "out of memory",
    "out of shared memory",
    "could not extend file",
    "no space left on device",
    "sorry, too many clients",
    "too many connections",
    "remaining connection slots are reserved",
    "server closed the connection",
    "connection reset",
    "connection refused",
    "could not resize shared memory",
];

/// The class of a diesel error.
pub fn classify_diesel(e: &DieselError) -> Class {
    match e {
        DieselError::DatabaseError(kind, info) => match kind {
            DatabaseErrorKind::UniqueViolation
            | DatabaseErrorKind::ForeignKeyViolation
            | DatabaseErrorKind::NotNullViolation
            | DatabaseErrorKind::CheckViolation
            | DatabaseErrorKind::RestrictViolation
            | DatabaseErrorKind::ExclusionViolation => Class::Rejected,
            DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::ReadOnlyTransaction
            | DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::UnableToSendCommand => Class::Transient,
            _ => classify_message(info.message()),
        },
        // Our own values could not be turned into a statement or a row: the same data will
        // fail the same way.
        DieselError::SerializationError(_)
        | DieselError::DeserializationError(_)
        | DieselError::QueryBuilderError(_) => Class::Rejected,
        // Transaction bookkeeping of a connection in a bad state, NotFound and the rest: nothing
        // to do with the data; a fresh connection will do.
        _ => Class::Transient,
    }
}

/// The class of a server's message for an `Unknown` SQLSTATE.
pub fn classify_message(message: &str) -> Class {
    let m = message.to_ascii_lowercase();
    if TRANSIENT_MESSAGES
        .iter()
        .any(|t| m.starts_with(t) || m.contains(t))
    {
        Class::Transient
    } else {
        Class::Rejected
    }
}

/// The class of any error: the first diesel error in its chain decides; an error with none (I/O,
/// the pool, a time-out, Redis, the lease) is transient.
pub fn classify(e: &anyhow::Error) -> Class {
    e.chain()
        .find_map(|c| c.downcast_ref::<DieselError>())
        .map_or(Class::Transient, classify_diesel)
}

/// Whether `e` is a rejection of the data.
pub fn is_rejection(e: &anyhow::Error) -> bool {
    classify(e) == Class::Rejected
}

/// The server's words for a rejection, for a dead letter's `error` field: the outermost context
/// (which table was being written) and the database's message.
pub fn reason(e: &anyhow::Error) -> String {
    format!("rejected by PostgreSQL: {e:#}")
}

/// Whether `e` says this process lost the writer lease (never worth a retry).
pub fn fenced(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<super::lease::Fenced>().is_some())
}

/// Runs `op` until it succeeds, at most `retries` more times, with exponential backoff.
pub async fn with_retries<T, F, Fut>(what: &str, retries: u32, mut op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            // A refusal of the data fails the same way again: no retry.
            Err(e) if attempt < retries && !fenced(&e) && !is_rejection(&e) => {
                attempt += 1;
                let wait = Duration::from_millis(100 * 2u64.pow(attempt.min(6)));
                tracing::warn!(
                    operation = what,
                    attempt,
                    error = format!("{e:#}"),
                    "retrying"
                );
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                return Err(e.context(format!("{what} failed after {} attempts", attempt + 1)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(kind: DatabaseErrorKind, message: &str) -> anyhow::Error {
        anyhow::Error::new(DieselError::DatabaseError(
            kind,
            Box::new(message.to_owned()),
        ))
    }

    #[test]
    fn data_exceptions_are_rejections() {
        for m in [
            "invalid byte sequence for encoding \"UTF8\": 0x00",
            "value overflows numeric format",
            "numeric field overflow",
            "unsupported Unicode escape sequence",
            "index row size 3000 exceeds btree version 4 maximum 2704",
        ] {
            let e = db(DatabaseErrorKind::Unknown, m).context("writing table generic_events");
            assert_eq!(classify(&e), Class::Rejected, "{m}");
        }
        assert_eq!(
            classify(&db(DatabaseErrorKind::NotNullViolation, "null value")),
            Class::Rejected
        );
    }

    #[test]
    fn passing_conditions_are_transient() {
        for m in [
            "deadlock detected",
            "canceling statement due to statement timeout",
            "could not obtain lock on row in relation \"writer_lease\"",
            "terminating connection due to administrator command",
            "the database system is shutting down",
            "out of memory",
        ] {
            assert_eq!(
                classify(&db(DatabaseErrorKind::Unknown, m)),
                Class::Transient,
                "{m}"
            );
        }
        assert_eq!(
            classify(&db(DatabaseErrorKind::ClosedConnection, "closed")),
            Class::Transient
        );
        assert_eq!(
            classify(&db(DatabaseErrorKind::SerializationFailure, "x")),
            Class::Transient
        );
        assert_eq!(
            classify(&anyhow::anyhow!("connection refused (os error 111)")),
            Class::Transient
        );
        let timeout: anyhow::Error = anyhow::anyhow!("batch commit timed out");
        assert_eq!(classify(&timeout), Class::Transient);
    }
}
