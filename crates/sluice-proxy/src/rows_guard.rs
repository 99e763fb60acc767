//! The rows-affected guard: an UPDATE, DELETE or MERGE that changes more
//! rows than the target allows is rolled back and refused.
//!
//! Sluice lets the statement run, reads the row count from its command tag,
//! and decides before the client hears of it:
//!
//! - a simple Query outside a transaction runs inside a `BEGIN` Sluice
//!   sends first; under the limit Sluice sends `COMMIT`, over it `ROLLBACK`
//!   and the refusal;
//! - a simple Query inside the client's transaction, or an Execute (simple or
//!   pipelined, in a transaction or in the extended protocol's implicit
//!   one), is followed, when over the limit, by a refusal marker the server
//!   rejects. That error aborts the transaction exactly as any error would,
//!   so the change can never be committed, and the client sees Sluice's
//!   error in the statement's place.
//!
//! While a guarded statement runs, nothing the client sent after it is
//! forwarded, so nothing can commit it behind Sluice's back.

use bytes::Bytes;
use sluice_wire::messages::{execute, ErrorResponse, Severity, TransactionStatus};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use crate::flight::{Awaiting, Completion, Expect, RowsGuard};
use crate::guard::{parse_message, query_message};
use crate::statements::Statements;
use crate::stream::WriteHalf;

/// Why a guarded statement could not be completed.
pub enum GuardError {
    /// Writing upstream failed.
    Upstream(std::io::Error),
    /// The upstream loop ended before answering.
    Gone,
}

impl From<std::io::Error> for GuardError {
    fn from(e: std::io::Error) -> Self {
        GuardError::Upstream(e)
    }
}

fn over_limit_error(rows: u64, limit: u64, environment: &str) -> Bytes {
    ErrorResponse::new(
        Severity::Error,
        "42501",
        format!(
            "sluice: blocked by rows-affected-limit: the statement changed {rows} rows, more than the {limit} allowed per statement on this {environment} target; it was rolled back"
        ),
    )
    .hint(format!(
        "narrow the WHERE clause or change the rows in batches of at most {limit}; an administrator can raise max_rows_affected for the target"
    ))
    .encode()
}

fn suspended_error() -> Bytes {
    ErrorResponse::new(
        Severity::Error,
        "42501",
        "sluice: blocked by rows-affected-limit: the rows an UPDATE or DELETE changed cannot be counted while its RETURNING rows are fetched in parts; it was rolled back",
    )
    .hint("fetch all RETURNING rows at once (no fetch size), or drop RETURNING")
    .encode()
}

async fn send(w: &mut WriteHalf, parts: &[&[u8]]) -> std::io::Result<()> {
    for p in parts {
        w.write_all(p).await?;
    }
    w.flush().await
}

async fn wait(rx: oneshot::Receiver<Completion>) -> Result<Completion, GuardError> {
    rx.await.map_err(|_| GuardError::Gone)
}

/// Run a simple Query whose UPDATEs/DELETEs are countable under the guard.
pub async fn run_query(
    w: &mut WriteHalf,
    st: &mut Statements<'_>,
    msg: Bytes,
    environment: &str,
) -> Result<(), GuardError> {
    let limit = st.rows_limit;
    // The transaction status this statement will run in is known only once
    // everything before it has been answered.
    if !st.flight.is_empty() {
        send(w, &[&execute::FLUSH]).await?;
        st.flight.drained().await;
    }
    // After a failed extended-protocol message the server discards
    // everything up to the client's Sync, this Query too: like a failed
    // transaction, it runs nothing.
    let status = if st.flight.skipping() {
        TransactionStatus::Failed
    } else {
        st.flight.status()
    };
    let (tx, rx) = oneshot::channel();
    match status {
        TransactionStatus::Idle => {
            st.expect(Expect::sluice(Awaiting::Query));
            let entry = st.client_entry(Awaiting::Query);
            st.expect(Expect {
                guard: Some(RowsGuard {
                    limit,
                    swallow_ready: true,
                }),
                done: Some(tx),
                ..entry
            });
            st.commit();
            send(w, &[&query_message("BEGIN"), &msg]).await?;
            let c = wait(rx).await?;
            let error_before_ready = c.over_limit.map(|n| {
                st.guard.note_refusal("rows-affected-limit", false);
                over_limit_error(n, limit, environment)
            });
            let end = Expect {
                forward_ready: true,
                error_before_ready,
                ..Expect::sluice(Awaiting::Query)
            };
            let sql = if c.over_limit.is_some() || c.error.is_some() {
                "ROLLBACK"
            } else {
                "COMMIT"
            };
            st.expect(end);
            st.commit();
            send(w, &[&query_message(sql)]).await?;
        }
        TransactionStatus::InTransaction => {
            let entry = st.client_entry(Awaiting::Query);
            st.expect(Expect {
                guard: Some(RowsGuard {
                    limit,
                    swallow_ready: false,
                }),
                done: Some(tx),
                ..entry
            });
            st.commit();
            send(w, &[&msg]).await?;
            if let Some(n) = wait(rx).await?.over_limit {
                let marker = st.guard.refuse(
                    over_limit_error(n, limit, environment),
                    false,
                    "rows-affected-limit",
                );
                st.expect(Expect::client(Awaiting::Query));
                st.commit();
                send(w, &[&query_message(&marker)]).await?;
            }
        }
        // A failed transaction (or a skipping server) runs nothing: the
        // server refuses or discards it itself.
        TransactionStatus::Failed => {
            let entry = st.client_entry(Awaiting::Query);
            st.expect(entry);
            st.commit();
            send(w, &[&msg]).await?;
        }
    }
    Ok(())
}

/// Run an Execute of a portal whose statement is a countable UPDATE/DELETE.
pub async fn run_execute(
    w: &mut WriteHalf,
    st: &mut Statements<'_>,
    msg: Bytes,
    environment: &str,
) -> Result<(), GuardError> {
    let limit = st.rows_limit;
    let (tx, rx) = oneshot::channel();
    let entry = st.client_entry(Awaiting::Execute);
    st.expect(Expect {
        guard: Some(RowsGuard {
            limit,
            swallow_ready: false,
        }),
        done: Some(tx),
        portal: Some(st.guarded_portal.clone()),
        ..entry
    });
    st.commit();
    // Flush: the server holds its answers until Sync or Flush, and the
    // client's Sync stays here until the count is known.
    send(w, &[&msg, &execute::FLUSH]).await?;
    // Skipped by the server (an error came before it): it never ran, and
    // the completion says so at once rather than never.
    let c = wait(rx).await?;
    let error = match (c.over_limit, c.suspended) {
        (Some(n), _) => over_limit_error(n, limit, environment),
        (None, true) => suspended_error(),
        (None, false) => return Ok(()),
    };
    let marker = st.guard.refuse(error, false, "rows-affected-limit");
    // A named marker statement: a failed Parse of the unnamed statement
    // would also drop the client's own unnamed statement.
    st.expect(Expect::client(Awaiting::Parse));
    st.commit();
    send(w, &[&parse_message("sluice_rows_guard", &marker)]).await?;
    Ok(())
}
