//! Streaming export of search results: JSON Lines or CSV, page by page
//! (bounded memory whatever the size of the trail).

use std::io::Write;

use crate::search::{Query, SearchRow};
use crate::store::Store;
use crate::AuditError;

/// Export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line (a [`SearchRow`]).
    JsonLines,
    /// CSV with a header; the event body is a JSON column.
    Csv,
}

/// CSV header.
pub const CSV_HEADER: &str =
    "time,chain,seq,ulid,code,environment,principal,target,decision,summary,event";

/// Quote a CSV field when needed (RFC 4180).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// One CSV line (without the newline).
pub fn csv_line(r: &SearchRow) -> String {
    let event = r
        .event
        .as_ref()
        .map(|e| serde_json::to_string(e).unwrap_or_default())
        .unwrap_or_default();
    [
        r.time.as_str(),
        r.chain.as_str(),
        &r.seq.to_string(),
        r.ulid.as_str(),
        r.code.as_str(),
        r.environment.as_str(),
        r.principal.as_str(),
        r.target.as_str(),
        r.decision.as_str(),
        r.summary.as_str(),
        event.as_str(),
    ]
    .iter()
    .map(|f| csv_field(f))
    .collect::<Vec<_>>()
    .join(",")
}

/// A write error on `what` (the output is a stream, not a known path).
fn output_error(what: &'static str) -> impl Fn(std::io::Error) -> AuditError + Copy {
    move |source| AuditError::Io {
        path: what.into(),
        source,
    }
}

/// Write every event matching `query` (its `limit` and `cursor` are
/// ignored), newest first, calling `progress` with the count so far after
/// each page. Returns the count.
pub fn export(
    store: &mut dyn Store,
    query: &Query,
    format: Format,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, AuditError> {
    let io = output_error("export output");
    let mut q = query.clone();
    q.limit = 1000;
    q.cursor = None;
    let mut n = 0u64;
    if format == Format::Csv {
        writeln!(out, "{CSV_HEADER}").map_err(io)?;
    }
    loop {
        let page = store.search(&q)?;
        for r in &page.rows {
            match format {
                Format::JsonLines => {
                    serde_json::to_writer(&mut *out, r)?;
                    out.write_all(b"\n").map_err(io)?;
                }
                Format::Csv => writeln!(out, "{}", csv_line(r)).map_err(io)?,
            }
            n += 1;
        }
        progress(n);
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
    }
    out.flush().map_err(io)?;
    Ok(n)
}

/// One line of [`dump_chains`].
#[derive(serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum DumpLine<'a> {
    Checkpoint(&'a crate::chain::Checkpoint),
    Record(&'a crate::event::Record),
}

/// What [`dump_chains`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dumped {
    /// Chains.
    pub chains: u64,
    /// Records.
    pub records: u64,
    /// Checkpoints.
    pub checkpoints: u64,
}

/// Write the chains as stored, for a verifier other than Sluice's own: per
/// chain (all of them, or only `only`), its signed checkpoints, then its
/// records in seq order with their digest, MAC and exact body text, one
/// JSON object per line (`"type": "checkpoint"` or `"record"`). Page by
/// page: bounded memory whatever the size of the trail. `progress` gets
/// the count of records so far.
pub fn dump_chains(
    store: &mut dyn Store,
    only: Option<&str>,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<Dumped, AuditError> {
    let io = output_error("dump output");
    let line = |l: DumpLine<'_>, out: &mut dyn Write| -> Result<(), AuditError> {
        serde_json::to_writer(&mut *out, &l)?;
        out.write_all(b"\n").map_err(io)
    };
    let mut done = Dumped::default();
    for info in store.chains()? {
        if only.is_some_and(|c| c != info.chain) {
            continue;
        }
        done.chains += 1;
        for c in store.checkpoints(&info.chain)? {
            line(DumpLine::Checkpoint(&c), out)?;
            done.checkpoints += 1;
        }
        let mut after = 0;
        loop {
            let page = store.read_chain(&info.chain, after, 1000)?;
            let Some(last) = page.last() else { break };
            after = last.record.seq;
            for r in &page {
                line(DumpLine::Record(&r.record), out)?;
            }
            done.records += page.len() as u64;
            progress(done.records);
        }
    }
    out.flush().map_err(io)?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting() {
        assert_eq!(csv_field("a"), "a");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\"\n"), "\"say \"\"hi\"\"\n\"");
    }
}
