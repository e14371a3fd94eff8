//! Storage errors, sorted by what they mean for the caller: an *outage*
//! (the backend is unreachable, going away, overloaded or timed out: retry
//! later, 503) or a *defect* (the backend refused a statement, or a row did
//! not read back: a bug to fix, 500). The original error is kept as the
//! source, so logs show the whole cause chain.
//!
//! The sorting looks at what the error is, never at its text: the SQLSTATE
//! of a database error, the I/O error underneath a connection failure, the
//! kinds the drivers expose.

use std::error::Error as StdError;

use tokio_postgres::error::SqlState;

/// Any error, kept as the cause.
pub type Cause = Box<dyn StdError + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The backend cannot serve now: connection refused or lost, the server
    /// shutting down, too many connections, a statement or lock timeout.
    #[error("storage unavailable")]
    Unavailable(#[source] Cause),
    /// Anything else the backend said, or a row that did not read back.
    #[error("storage error")]
    Backend(#[source] Cause),
}

impl StorageError {
    /// A defect with no underlying error: something the store relies on
    /// does not hold (a table name it did not make, a stage that vanished).
    pub fn defect(what: impl Into<String>) -> Self {
        Self::Backend(what.into().into())
    }

    /// `what` went wrong because of `cause`, and it is a defect.
    pub fn defect_because(what: impl Into<String>, cause: impl Into<Cause>) -> Self {
        Self::Backend(Box::new(Because {
            what: what.into(),
            cause: cause.into(),
        }))
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// A message with the error that caused it.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct Because {
    what: String,
    #[source]
    cause: Cause,
}

/// Whether a SQLSTATE means "the server cannot serve this now" rather than
/// "this statement or row is wrong".
pub fn is_outage_state(code: &SqlState) -> bool {
    let code = code.code();
    // 08: connection exception; 53: insufficient resources (too many
    // connections, out of memory, disk full); 57P: operator intervention
    // (admin or crash shutdown, cannot connect now, database dropped);
    // 58: system error (I/O in the server).
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || code.starts_with("58")
        // statement_timeout / a cancelled query, lock_timeout, the
        // idle-in-transaction timeout, serialization failure and deadlock:
        // the same statement can succeed when retried.
        || code == SqlState::QUERY_CANCELED.code()
        || code == SqlState::LOCK_NOT_AVAILABLE.code()
        || code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT.code()
        || code == SqlState::T_R_SERIALIZATION_FAILURE.code()
        || code == SqlState::T_R_DEADLOCK_DETECTED.code()
}

/// Whether an I/O error is somewhere in the cause chain of `err`.
fn caused_by_io(err: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<std::io::Error>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// Whether a tokio-postgres error is an outage.
pub fn pg_is_outage(err: &tokio_postgres::Error) -> bool {
    if let Some(db) = err.as_db_error() {
        return is_outage_state(db.code());
    }
    if err.is_closed() || caused_by_io(err) {
        return true;
    }
    // tokio-postgres keeps its error kinds private; a connect timeout is the
    // one kind without a cause that means "unreachable". Its message is
    // fixed by the kind, so comparing it is comparing the kind.
    err.source().is_none() && err.to_string() == "timeout waiting for server"
}

impl From<tokio_postgres::Error> for StorageError {
    fn from(err: tokio_postgres::Error) -> Self {
        if pg_is_outage(&err) {
            Self::Unavailable(Box::new(err))
        } else {
            Self::Backend(Box::new(err))
        }
    }
}

impl From<deadpool_postgres::PoolError> for StorageError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError as P;
        let outage = match &err {
            P::Backend(e) => pg_is_outage(e),
            P::PostCreateHook(deadpool_postgres::HookError::Backend(e)) => pg_is_outage(e),
            P::Timeout(_) | P::Closed => true,
            P::PostCreateHook(_) | P::NoRuntimeSpecified => false,
        };
        if outage {
            Self::Unavailable(Box::new(err))
        } else {
            Self::Backend(Box::new(err))
        }
    }
}

/// Whether an sqlx error is an outage.
pub fn sqlx_is_outage(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| is_outage_state(&SqlState::from_code(&code))),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

impl From<sqlx::Error> for StorageError {
    fn from(err: sqlx::Error) -> Self {
        if sqlx_is_outage(&err) {
            Self::Unavailable(Box::new(err))
        } else {
            Self::Backend(Box::new(err))
        }
    }
}

/// Whether anything in the cause chain of `err` is a storage outage: a
/// driver error that is one, or a `StorageError::Unavailable`. For errors
/// that reach us wrapped by another crate (cqrs-es, postgres-es).
pub fn chain_is_outage(err: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(e) = e.downcast_ref::<sqlx::Error>() {
            return sqlx_is_outage(e);
        }
        if let Some(e) = e.downcast_ref::<tokio_postgres::Error>() {
            return pg_is_outage(e);
        }
        if let Some(e) = e.downcast_ref::<StorageError>() {
            return e.is_unavailable();
        }
        next = e.source();
    }
    false
}

/// "error: cause: cause" in one line, for logs. A cause whose text its
/// wrapper already repeats is not printed twice.
pub fn error_chain(err: &dyn StdError) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_told_apart_from_bad_statements_by_sqlstate() {
        for outage in [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::CONNECTION_FAILURE,
            SqlState::QUERY_CANCELED,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::DISK_FULL,
        ] {
            assert!(is_outage_state(&outage), "{}", outage.code());
        }
        for defect in [
            SqlState::UNIQUE_VIOLATION,
            SqlState::UNTRANSLATABLE_CHARACTER,
            SqlState::INVALID_TEXT_REPRESENTATION,
            SqlState::SYNTAX_ERROR,
            SqlState::UNDEFINED_TABLE,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::RAISE_EXCEPTION,
        ] {
            assert!(!is_outage_state(&defect), "{}", defect.code());
        }
    }

    #[test]
    fn io_errors_anywhere_in_the_chain_are_outages_and_the_chain_is_kept() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let sqlx = sqlx::Error::Io(io);
        assert!(sqlx_is_outage(&sqlx));
        let err = StorageError::from(sqlx);
        assert!(err.is_unavailable());
        assert!(chain_is_outage(&err));
        assert_eq!(
            error_chain(&err),
            "storage unavailable: error communicating with database: refused"
        );
        let decode = StorageError::from(sqlx::Error::Decode("bad row".into()));
        assert!(!decode.is_unavailable());
        assert!(!chain_is_outage(&decode));
    }

    #[test]
    fn a_defect_keeps_its_cause() {
        let cause = serde_json::from_str::<u8>("x").unwrap_err();
        let err = StorageError::defect_because("an inbox row does not parse", cause);
        assert!(error_chain(&err).starts_with("storage error: an inbox row does not parse: "));
    }
}
