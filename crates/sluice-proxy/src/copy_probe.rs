//! Before a `COPY … TO STDOUT` runs, Sluice learns where its columns come
//! from (COPY sends no RowDescription): it describes a query with the same
//! columns as a statement of its own (Parse, Describe, Close, Sync; its
//! answers and errors are kept from the client), plans the masking of each
//! column, and sends the client's COPY with that plan attached.

use std::sync::Arc;

use bytes::Bytes;
use sluice_mask::Masker;
use sluice_wire::messages::{execute, TransactionStatus};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use crate::flight::{Awaiting, Expect};
use crate::guard::{parse_message, query_message};
use crate::masking::{plan_columns, CopyPlan};
use crate::rows_guard::GuardError;
use crate::session::CatalogAccess;
use crate::statements::Statements;
use crate::stream::WriteHalf;

const PROBE: &str = "sluice_copy_probe";

async fn send(w: &mut WriteHalf, parts: &[&[u8]]) -> std::io::Result<()> {
    for p in parts {
        w.write_all(p).await?;
    }
    w.flush().await
}

fn describe_statement(name: &str) -> Bytes {
    let mut m = bytes::BytesMut::new();
    let at = sluice_wire::frame::begin(&mut m, b'D');
    m.extend_from_slice(b"S");
    sluice_wire::frame::put_cstr(&mut m, name);
    sluice_wire::frame::finish(&mut m, at);
    m.freeze()
}

fn close_statement(name: &str) -> Bytes {
    let mut m = bytes::BytesMut::new();
    let at = sluice_wire::frame::begin(&mut m, b'C');
    m.extend_from_slice(b"S");
    sluice_wire::frame::put_cstr(&mut m, name);
    sluice_wire::frame::finish(&mut m, at);
    m.freeze()
}

/// Probe the columns of `copy`, then send the client's COPY (`msg`) with
/// its masking plan. If the plan cannot be made, the COPY is refused.
pub async fn run(
    w: &mut WriteHalf,
    st: &mut Statements<'_>,
    msg: Bytes,
    copy: &sluice_sql::CopyOut,
    masker: &Masker,
    lookup: &CatalogAccess<'_>,
) -> Result<(), GuardError> {
    if !st.flight.is_empty() {
        send(w, &[&execute::FLUSH]).await?;
        st.flight.drained().await;
    }
    // In a failed transaction the COPY will fail too, and after a failed
    // extended-protocol message the server discards it: nothing to plan
    // (a probe's own Sync would end the server's skipping early).
    if st.flight.status() == TransactionStatus::Failed || st.flight.skipping() {
        let entry = st.client_entry(Awaiting::Query);
        st.expect(entry);
        st.commit();
        send(w, &[&msg]).await?;
        return Ok(());
    }
    let in_transaction = st.flight.status() == TransactionStatus::InTransaction;
    let probed = match &copy.probe {
        Some(sql) => probe(w, st, sql, copy.sources.as_deref(), masker, lookup).await?,
        None => None,
    };
    // In a transaction the probe's failure has aborted it: the COPY gets
    // "transaction aborted", so the client is told the probe's real error
    // in its place, as if the COPY itself had failed (it would have).
    let probe_error = st.flight.take_probe_error().filter(|_| in_transaction);
    let plan = match probed {
        Some(result) => CopyPlan::new(&result, copy).map(|mut p| {
            p.refuse_unmaskable = st.refuse_unmaskable;
            Some(p)
        }),
        // The probe failed, most likely the way the COPY will (a bad query,
        // no permission): the server says why. Should the COPY succeed
        // after all, its data arrives without a plan and is not sent.
        None => Ok(None),
    };
    match plan {
        Ok(plan) => {
            let entry = st.client_entry(Awaiting::Query);
            st.expect(Expect {
                copy: plan.map(Arc::new),
                replace_error: probe_error,
                ..entry
            });
            st.commit();
            send(w, &[&msg]).await?;
        }
        Err(why) => {
            st.audit_refusal(false, "masking");
            let marker = st.guard.refuse_with(
                "masking",
                &format!("the data of this COPY cannot be masked: {why}"),
                "copy fewer or simpler columns, or ask your administrator",
            );
            st.expect(Expect::client(Awaiting::Query));
            st.commit();
            send(w, &[&query_message(&marker)]).await?;
        }
    }
    Ok(())
}

/// The Parse of a `COPY … TO STDOUT` that starts a pipeline: probe its
/// columns (as a pipeline of Sluice's own, before it), remember the plan
/// for the statement, then send the Parse.
pub async fn run_parse(
    w: &mut WriteHalf,
    st: &mut Statements<'_>,
    msg: Bytes,
    name: String,
    copy: &sluice_sql::CopyOut,
    masker: &Masker,
    lookup: &CatalogAccess<'_>,
) -> Result<(), GuardError> {
    let in_transaction = st.flight.status() == TransactionStatus::InTransaction;
    // Never while the server skips to a Sync: the probe's Sync would end it.
    let probed = match &copy.probe {
        Some(sql) if !st.flight.skipping() => {
            probe(w, st, sql, copy.sources.as_deref(), masker, lookup).await?
        }
        _ => None,
    };
    let probe_error = st.flight.take_probe_error().filter(|_| in_transaction);
    let refuse = st.refuse_unmaskable;
    match probed.map(|result| {
        CopyPlan::new(&result, copy).map(|mut p| {
            p.refuse_unmaskable = refuse;
            p
        })
    }) {
        Some(Err(why)) => {
            st.audit_refusal(false, "masking");
            let marker = st.guard.refuse_with(
                "masking",
                &format!("the data of this COPY cannot be masked: {why}"),
                "copy fewer or simpler columns, or ask your administrator",
            );
            st.expect(Expect::client(Awaiting::Parse));
            st.commit();
            send(w, &[&parse_message(&name, &marker)]).await?;
        }
        // Without a plan the statement's data, should it come, is not sent.
        plan => {
            st.prepared_copy(name, plan.and_then(Result::ok).map(Arc::new), probe_error);
            st.commit();
            send(w, &[&msg]).await?;
        }
    }
    Ok(())
}

/// Describe `sql` as Sluice's own statement; the plan of its columns.
async fn probe(
    w: &mut WriteHalf,
    st: &mut Statements<'_>,
    sql: &str,
    sources: Option<&[sluice_sql::OutputColumn]>,
    masker: &Masker,
    lookup: &CatalogAccess<'_>,
) -> Result<Option<crate::masking::ResultPlan>, GuardError> {
    st.flight.take_probe_error();
    let (tx, rx) = oneshot::channel();
    let quiet = |awaiting| Expect {
        quiet: true,
        ..Expect::sluice(awaiting)
    };
    st.expect(quiet(Awaiting::Parse));
    st.expect(Expect {
        done: Some(tx),
        ..quiet(Awaiting::DescribeStatement)
    });
    st.expect(quiet(Awaiting::Close));
    st.expect(quiet(Awaiting::Sync));
    st.commit();
    send(
        w,
        &[
            &parse_message(PROBE, sql),
            &describe_statement(PROBE),
            &close_statement(PROBE),
            &[b'S', 0, 0, 0, 4],
        ],
    )
    .await?;
    let described = rx.await.map_err(|_| GuardError::Gone)?;
    // Let the Sync's answer arrive so the session is idle again.
    st.flight.drained().await;
    let Some(body) = described.row_description else {
        return Ok(None);
    };
    for _ in 0..2 {
        match plan_columns(
            masker,
            &lookup.catalog,
            &body,
            sources,
            lookup.unmask.as_deref(),
        ) {
            Ok(plan) => return Ok(plan),
            Err(missing) => {
                if let Err(e) = lookup
                    .catalog
                    .load(lookup.target, lookup.connector, lookup.timeout, &missing)
                    .await
                {
                    tracing::warn!(target = %lookup.target.name, error = %e, "catalog lookup for COPY masking failed");
                    return Ok(None);
                }
            }
        }
    }
    Ok(None)
}
