//! The OpenAPI 3.0 document of the admin HTTP surface, written by hand
//! (`GET /api/openapi.json`). A test checks that it names every route the
//! router has, and schemathesis fuzzes the server against it.

use serde_json::{json, Map, Value};

/// No control characters (what `char::is_control` refuses).
const PRINTABLE: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// A time as `sluice_audit::util::parse_time` takes it: an age, a date, or
/// RFC 3339 (ASCII digits only).
const TIME: &str = "^([0-9]{1,9}(ms|s|m|h|d|w)|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])([Tt ]([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})?)?)$";

/// A name-like string: at most `max` characters, no control characters.
fn string(max: usize) -> Value {
    json!({ "type": "string", "maxLength": max, "pattern": PRINTABLE })
}

fn obj(required: &[&str], props: Value) -> Value {
    json!({ "type": "object", "required": required, "properties": props })
}

fn nullable_string() -> Value {
    json!({ "type": "string", "nullable": true })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn json_body(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn error(description: &str) -> Value {
    json_body(description, schema_ref("Error"))
}

/// Responses every authenticated route may give, plus `ok` and `extra`.
fn responses(ok: Value, extra: &[(&str, &str)]) -> Value {
    let mut r = Map::new();
    r.insert("200".into(), ok);
    r.insert(
        "400".into(),
        error("a parameter is not acceptable (the message names it)"),
    );
    let mut unauthenticated = error("no bearer token, or one that is not valid");
    unauthenticated["headers"] = json!({ "WWW-Authenticate": {
        "description": "`Bearer realm=\"sluice\"`, with `error=\"invalid_token\"` for a token that is not valid",
        "required": true,
        "schema": { "type": "string" }
    } });
    r.insert("401".into(), unauthenticated);
    r.insert(
        "403".into(),
        error("a valid token whose roles do not allow this"),
    );
    r.insert(
        "503".into(),
        error("the identity provider (to check a token), the audit store or the audit trail is not available"),
    );
    for (code, description) in extra {
        r.insert((*code).into(), error(description));
    }
    Value::Object(r)
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
}

fn time_param(name: &str, description: &str) -> Value {
    query(
        name,
        &format!("{description}: RFC 3339 (`2024-05-01T12:00:00Z`), a date (`2024-05-01`) or an age (`30d`, `12h`)"),
        json!({ "type": "string", "pattern": TIME }),
    )
}

fn filter_params(with_search: bool) -> Vec<Value> {
    let mut p = vec![
        query(
            "principal",
            "principal name (or the user name of an auth failure, or an actor)",
            string(256),
        ),
        query("target", "target name", string(256)),
        query("environment", "environment label", string(256)),
        query(
            "table",
            "table read or written (`users` also matches `public.users`)",
            string(256),
        ),
        query(
            "column",
            "column read or written: `email` or `users.email`",
            string(256),
        ),
    ];
    if with_search {
        p.push(query(
            "decision",
            "statement decision",
            json!({ "type": "string", "enum": ["allow", "deny", "approval"] }),
        ));
        p.push(query(
            "kind",
            "kind of event: a group or an event code",
            json!({ "type": "string", "enum": ["statement", "session", "auth", "admin",
                "db.statement", "session.start", "session.end", "auth.failure", "admin.action"] }),
        ));
        p.push(query("session", "session id", string(64)));
    }
    p.push(time_param("since", "from (inclusive)"));
    p.push(time_param("until", "until (exclusive)"));
    if with_search {
        p.push(query(
            "text",
            "words that must all appear (names, tables, statement text)",
            string(1024),
        ));
        p.push(query(
            "limit",
            "page size (default 50)",
            json!({ "type": "integer", "minimum": 1, "maximum": 1000 }),
        ));
        p.push(query(
            "cursor",
            "`next_cursor` of the previous page",
            json!({ "type": "string", "pattern": "^[0-9A-HJKMNP-TV-Z]{26}$" }),
        ));
    }
    p
}

fn schemas() -> Value {
    let mut s = Map::new();
    s.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["error", "code"],
            "properties": {
                "error": { "type": "string", "description": "what went wrong" },
                "code": { "type": "string", "description": "stable code: bad_request, unauthenticated, forbidden, not_found, method_not_allowed, payload_too_large, policy_invalid, reload_failed, audit_unavailable, not_pending, expired, already_voted, self_approval, not_in_group, justification_required, store_unavailable, idp_unavailable, policy_dir_unavailable, internal" },
                "line": { "type": "integer", "description": "policy_invalid: 1-based line in the submitted text" },
                "column": { "type": "integer" },
                "hint": { "type": "string" },
                "valid": { "type": "boolean" }
            }
        }),
    );
    s.insert(
        "Session".into(),
        obj(
            &[
                "id",
                "principal",
                "kind",
                "target",
                "environment",
                "client",
                "application_name",
                "tls",
                "started_ms",
            ],
            json!({
                "id": { "type": "string" },
                "principal": { "type": "string" },
                "kind": { "type": "string", "enum": ["human", "service", "agent"] },
                "on_behalf_of": nullable_string(),
                "target": { "type": "string" },
                "environment": { "type": "string" },
                "client": { "type": "string", "description": "client address" },
                "application_name": { "type": "string" },
                "tls": { "type": "boolean" },
                "started_ms": { "type": "integer", "format": "int64" }
            }),
        ),
    );
    s.insert(
        "Sessions".into(),
        obj(
            &["sessions"],
            json!({ "sessions": { "type": "array", "items": schema_ref("Session") } }),
        ),
    );
    s.insert(
        "Killed".into(),
        obj(
            &["id", "killed"],
            json!({
                "id": { "type": "string" },
                "killed": { "type": "boolean" },
                "principal": { "type": "string" },
                "target": { "type": "string" }
            }),
        ),
    );
    s.insert(
        "AuditEvent".into(),
        obj(
            &[
                "chain",
                "seq",
                "ulid",
                "time",
                "time_ms",
                "code",
                "environment",
                "principal",
                "target",
                "decision",
                "summary",
            ],
            json!({
                "chain": { "type": "string" },
                "seq": { "type": "integer", "format": "int64" },
                "ulid": { "type": "string" },
                "time": { "type": "string", "description": "RFC 3339" },
                "time_ms": { "type": "integer", "format": "int64" },
                "code": { "type": "string" },
                "environment": { "type": "string" },
                "principal": { "type": "string" },
                "target": { "type": "string" },
                "decision": { "type": "string" },
                "summary": { "type": "string" },
                "event": { "type": "object", "nullable": true, "description": "the event body; null once retention removed it" }
            }),
        ),
    );
    s.insert(
        "AuditPage".into(),
        obj(
            &["rows"],
            json!({
                "rows": { "type": "array", "items": schema_ref("AuditEvent") },
                "next_cursor": nullable_string()
            }),
        ),
    );
    s.insert(
        "UsageRow".into(),
        obj(
            &[
                "principal",
                "on_behalf_of",
                "target",
                "environment",
                "table",
                "column",
                "masked",
                "reads",
                "writes",
                "rows",
                "bytes",
                "first_seen",
                "last_seen",
            ],
            json!({
                "principal": { "type": "string" },
                "on_behalf_of": { "type": "string" },
                "target": { "type": "string" },
                "environment": { "type": "string" },
                "table": { "type": "string" },
                "column": { "type": "string", "description": "empty for the table as a whole" },
                "masked": { "type": "boolean" },
                "reads": { "type": "integer", "format": "int64" },
                "writes": { "type": "integer", "format": "int64" },
                "rows": { "type": "integer", "format": "int64" },
                "bytes": { "type": "integer", "format": "int64" },
                "first_seen": { "type": "string" },
                "last_seen": { "type": "string" }
            }),
        ),
    );
    s.insert(
        "Usage".into(),
        obj(
            &["rows"],
            json!({ "rows": { "type": "array", "items": schema_ref("UsageRow") } }),
        ),
    );
    s.insert(
        "LineageEdge".into(),
        obj(
            &[
                "source",
                "destination",
                "kind",
                "fingerprint",
                "principal",
                "on_behalf_of",
                "principal_kind",
                "target",
                "environment",
                "time_ms",
                "time",
                "chain",
                "seq",
            ],
            json!({
                "source": { "type": "string" },
                "destination": { "type": "string" },
                "kind": { "type": "string" },
                "fingerprint": { "type": "string" },
                "principal": { "type": "string" },
                "on_behalf_of": { "type": "string" },
                "principal_kind": { "type": "string" },
                "target": { "type": "string" },
                "environment": { "type": "string" },
                "time_ms": { "type": "integer", "format": "int64" },
                "time": { "type": "string" },
                "chain": { "type": "string" },
                "seq": { "type": "integer", "format": "int64" }
            }),
        ),
    );
    s.insert(
        "Lineage".into(),
        obj(
            &["table", "depth", "edges"],
            json!({
                "table": { "type": "string" },
                "depth": { "type": "integer" },
                "edges": { "type": "array", "items": schema_ref("LineageEdge") }
            }),
        ),
    );
    s.insert(
        "Target".into(),
        obj(
            &["name", "environment", "upstream", "database", "tls", "health"],
            json!({
                "name": { "type": "string" },
                "environment": { "type": "string" },
                "upstream": { "type": "string", "description": "host:port" },
                "database": { "type": "string" },
                "tls": { "type": "string", "enum": ["disable", "prefer", "require", "verify-full"] },
                "health": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {
                        "status": { "type": "string", "enum": ["up", "down"] },
                        "latency_ms": { "type": "number", "description": "TCP connect time" },
                        "error": { "type": "string" }
                    }
                }
            }),
        ),
    );
    s.insert(
        "Targets".into(),
        obj(
            &["targets"],
            json!({ "targets": { "type": "array", "items": schema_ref("Target") } }),
        ),
    );
    s.insert(
        "Reloaded".into(),
        obj(
            &["status"],
            json!({ "status": { "type": "string", "enum": ["ok"] } }),
        ),
    );
    s.insert(
        "Valid".into(),
        obj(
            &["valid", "policies", "warnings"],
            json!({
                "valid": { "type": "boolean" },
                "policies": { "type": "integer" },
                "warnings": { "type": "array", "items": {
                    "type": "object",
                    "required": ["message"],
                    "properties": { "message": { "type": "string" }, "line": { "type": "integer" } }
                } }
            }),
        ),
    );
    s.insert(
        "Vote".into(),
        obj(
            &["approver", "approve", "at_ms"],
            json!({
                "approver": { "type": "string" },
                "approve": { "type": "boolean" },
                "justification": nullable_string(),
                "at_ms": { "type": "integer", "format": "int64" }
            }),
        ),
    );
    s.insert(
        "Approval".into(),
        obj(
            &["id", "status", "created_ms", "expires_at_ms", "decisions", "binding", "principal_kind",
              "groups", "environment", "session", "normalized", "statement", "facts", "rule", "reason",
              "approver_group", "required_approvals", "require_justification", "mode"],
            json!({
                "id": { "type": "string" },
                "status": { "type": "string", "enum": ["pending", "approved", "denied", "expired", "used", "break_glass"] },
                "created_ms": { "type": "integer", "format": "int64" },
                "decided_ms": { "type": "integer", "format": "int64", "nullable": true },
                "used_ms": { "type": "integer", "format": "int64", "nullable": true },
                "expires_at_ms": { "type": "integer", "format": "int64" },
                "decisions": { "type": "array", "items": schema_ref("Vote") },
                "binding": obj(&["principal", "target", "fingerprint", "params_hash"], json!({
                    "principal": { "type": "string" },
                    "target": { "type": "string" },
                    "fingerprint": { "type": "string" },
                    "params_hash": { "type": "string" }
                })),
                "principal_kind": { "type": "string" },
                "on_behalf_of": nullable_string(),
                "groups": { "type": "array", "items": { "type": "string" } },
                "environment": { "type": "string" },
                "session": { "type": "string" },
                "normalized": { "type": "string" },
                "statement": { "type": "string", "description": "the full statement: approvers see what they approve" },
                "facts": { "type": "object" },
                "rule": { "type": "string" },
                "reason": { "type": "string" },
                "approver_group": { "type": "string" },
                "required_approvals": { "type": "integer" },
                "require_justification": { "type": "boolean" },
                "mode": { "type": "string", "enum": ["hold", "refuse"] },
                "break_glass": nullable_string()
            }),
        ),
    );
    s.insert(
        "Approvals".into(),
        obj(
            &["approvals"],
            json!({
                "approvals": { "type": "array", "items": schema_ref("Approval") },
                "next_before": nullable_string()
            }),
        ),
    );
    s.insert(
        "Decision".into(),
        json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "justification": { "type": "string", "maxLength": 1000, "pattern": PRINTABLE, "nullable": true }
            }
        }),
    );
    Value::Object(s)
}

fn approval_paths(p: &mut Map<String, Value>) {
    let id = json!({ "name": "id", "in": "path", "required": true, "description": "approval request id",
                     "schema": { "type": "string", "pattern": "^[A-Za-z0-9]{1,64}$" } });
    p.insert(
        "/api/approvals".into(),
        json!({ "get": {
            "operationId": "listApprovals",
            "summary": "approval requests, newest first (admin, auditor, approver)",
            "parameters": [
                query("status", "only this status", json!({ "type": "string",
                    "enum": ["pending", "approved", "denied", "expired", "used", "break_glass"] })),
                query("principal", "only this principal", string(256)),
                query("target", "only this target", string(256)),
                query("environment", "only this environment", string(256)),
                query("approver_group", "only requests this group decides", string(256)),
                query("limit", "page size (default 100)", json!({ "type": "integer", "minimum": 1, "maximum": 1000 })),
                query("before", "`next_before` of the previous page",
                      json!({ "type": "string", "pattern": "^[0-9A-HJKMNP-TV-Z]{26}$" }))
            ],
            "responses": responses(json_body("approval requests", schema_ref("Approvals")), &[])
        } }),
    );
    p.insert(
        "/api/approvals/{id}".into(),
        json!({ "get": {
            "operationId": "getApproval",
            "summary": "one approval request, with the full statement and the votes (admin, auditor, approver)",
            "parameters": [id.clone()],
            "responses": responses(json_body("the request", schema_ref("Approval")),
                                   &[("404", "no request has this id")])
        } }),
    );
    for (verb, summary) in [
        ("approve", "approve a pending request as the caller (approver or admin role, and a member of the request's approver group; never the requester)"),
        ("deny", "deny a pending request as the caller (approver or admin role, and a member of the request's approver group)"),
    ] {
        p.insert(
            format!("/api/approvals/{{id}}/{verb}"),
            json!({ "post": {
                "operationId": format!("{verb}Approval"),
                "summary": format!("{summary}; recorded as admin.action approval.{verb}"),
                "parameters": [id.clone()],
                "requestBody": { "required": false, "content": { "application/json": { "schema": schema_ref("Decision") } } },
                "responses": responses(json_body("the request as it now stands", schema_ref("Approval")),
                    &[("404", "no request has this id"),
                      ("409", "not pending (not_pending), expired, or the caller already voted (already_voted)"),
                      ("422", "a justification is required (justification_required)")])
            } }),
        );
    }
    p.insert(
        "/api/approvals/link".into(),
        json!({ "get": {
            "operationId": "approvalLink",
            "summary": "the page a signed chat link opens: the request in full; viewing decides nothing",
            "security": [],
            "parameters": [{ "name": "t", "in": "query", "required": true, "description": "the signed token",
                             "schema": { "type": "string", "maxLength": 512 } }],
            "responses": {
                "200": { "description": "the request", "content": { "text/html": { "schema": { "type": "string" } } } },
                "400": { "description": "no token", "content": { "text/html": { "schema": { "type": "string" } } } },
                "403": { "description": "a tampered or expired link", "content": { "text/html": { "schema": { "type": "string" } } } },
                "404": { "description": "links are not enabled, or no such request", "content": { "text/html": { "schema": { "type": "string" } } } },
                "503": { "description": "the approval store is not available", "content": { "text/html": { "schema": { "type": "string" } } } }
            }
        } }),
    );
    p.insert(
        "/api/approvals/callback".into(),
        json!({ "post": {
            "operationId": "approvalCallback",
            "summary": "a chat's interactive callback (Slack block_actions), signed with the chat's signing secret; the clicking chat user decides as the principal `chat_users` maps it to",
            "security": [],
            "requestBody": { "required": true, "content": {
                "application/x-www-form-urlencoded": { "schema": { "type": "object", "properties": { "payload": { "type": "string" } } } },
                "application/json": { "schema": { "type": "object" } }
            } },
            "responses": {
                "200": json_body("an ephemeral chat message saying what happened", json!({ "type": "object" })),
                "400": error("the payload is not a callback"),
                "401": error("the signature is missing, wrong or older than 5 minutes"),
                "403": error("the button's token is tampered or expired"),
                "404": error("callbacks are not enabled"),
                "413": error("the body is larger than 64 KiB"),
                "503": error("the audit trail or the approval store is not available")
            }
        } }),
    );
}

fn paths() -> Value {
    let mut p = Map::new();
    let public = |summary: &str, media: &str| {
        json!({ "get": {
            "summary": summary,
            "security": [],
            "responses": { "200": { "description": "ok", "content": { media: { "schema": { "type": "string" } } } },
                           "503": { "description": "draining (readyz only)", "content": { "text/plain": { "schema": { "type": "string" } } } } }
        } })
    };
    p.insert("/healthz".into(), public("liveness: `ok`", "text/plain"));
    p.insert(
        "/readyz".into(),
        public("readiness: `ready`, or 503 `draining`", "text/plain"),
    );
    p.insert(
        "/metrics".into(),
        public("Prometheus metrics", "text/plain"),
    );
    p.insert(
        "/api/openapi.json".into(),
        json!({ "get": {
            "operationId": "openapi",
            "summary": "this document (any role)",
            "responses": responses(json_body("the OpenAPI document", json!({ "type": "object" })), &[])
        } }),
    );
    p.insert(
        "/api/sessions".into(),
        json!({ "get": {
            "operationId": "listSessions",
            "summary": "live sessions (admin, auditor, approver)",
            "responses": responses(json_body("live sessions, oldest first", schema_ref("Sessions")), &[])
        } }),
    );
    // A session listed can be ended (schemathesis follows this in its
    // stateful phase).
    p["/api/sessions"]["get"]["responses"]["200"]["links"] = json!({
        "KillSession": {
            "operationId": "killSession",
            "parameters": { "id": "$response.body#/sessions/0/id" }
        }
    });
    p.insert(
        "/api/sessions/{id}".into(),
        json!({ "delete": {
            "operationId": "killSession",
            "summary": "end a live session: its client gets FATAL 57P01 (admin); recorded as admin.action session.kill",
            "parameters": [{ "name": "id", "in": "path", "required": true, "description": "session id",
                             "schema": { "type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$" } }],
            "responses": responses(json_body("the session is being ended", schema_ref("Killed")),
                                   &[("404", "no live session has this id")])
        } }),
    );
    p.insert(
        "/api/audit".into(),
        json!({ "get": {
            "operationId": "searchAudit",
            "summary": "search the audit trail, newest first (admin, auditor); same filters as `sluice audit search`",
            "parameters": filter_params(true),
            "responses": responses(json_body("a page of events", schema_ref("AuditPage")), &[])
        } }),
    );
    p.insert(
        "/api/usage".into(),
        json!({ "get": {
            "operationId": "usage",
            "summary": "who touched which table and column, how much (admin, auditor); as `sluice usage`",
            "parameters": filter_params(false),
            "responses": responses(json_body("usage totals", schema_ref("Usage")), &[])
        } }),
    );
    p.insert(
        "/api/usage/lineage/{table}".into(),
        json!({ "get": {
            "operationId": "lineage",
            "summary": "where a table's data came from (admin, auditor); as `sluice usage lineage`",
            "parameters": [
                { "name": "table", "in": "path", "required": true, "description": "`table` or `schema.table`",
                  "schema": { "type": "string", "minLength": 1, "maxLength": 256, "pattern": PRINTABLE } },
                query("depth", "steps back through sources (default 5)", json!({ "type": "integer", "minimum": 1, "maximum": 20 }))
            ],
            "responses": responses(json_body("lineage edges", schema_ref("Lineage")), &[])
        } }),
    );
    p.insert(
        "/api/targets".into(),
        json!({ "get": {
            "operationId": "listTargets",
            "summary": "targets with a health probe: a TCP connect to the upstream (admin, auditor)",
            "responses": responses(json_body("targets", schema_ref("Targets")), &[])
        } }),
    );
    p.insert(
        "/api/policy/reload".into(),
        json!({ "post": {
            "operationId": "reload",
            "summary": "re-read the config, TLS files and policies, as SIGHUP does (admin); recorded as admin.action config.reload",
            "responses": responses(json_body("reloaded", schema_ref("Reloaded")),
                                   &[("422", "the config or policies do not load; the previous configuration stays in force (code reload_failed)")])
        } }),
    );
    p.insert(
        "/api/policy/validate".into(),
        json!({ "post": {
            "operationId": "validatePolicy",
            "summary": "check Cedar policy text against the schema and together with the policies in force, without installing it (admin)",
            "parameters": [query("replaces", "a file of the policy directory the text would replace (else it is added)",
                                 json!({ "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,121}\\.cedar$" }))],
            "requestBody": { "required": true, "description": "Cedar policy text (UTF-8, not empty, at most 1 MiB)",
                             "content": { "text/plain": {
                                 "schema": { "type": "string", "minLength": 1 },
                                 "example": "@id(\"no-drop-for-agents\")\n@reason(\"agents never drop\")\nforbid (principal is Sluice::Agent, action == Sluice::Action::\"drop\", resource);\n"
                             } } },
            "responses": responses(json_body("valid", schema_ref("Valid")),
                                   &[("413", "the body is larger than 1 MiB"),
                                     ("422", "not valid: code policy_invalid, with line and column when known")])
        } }),
    );
    approval_paths(&mut p);
    Value::Object(p)
}

/// The document.
pub fn document() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Sluice admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Live sessions, the audit trail, usage and lineage, targets and policy of one Sluice process. Authenticate with `Authorization: Bearer <token>`: an OIDC token from a configured issuer (roles from `[admin]` groups) or a static admin token. Errors are `{\"error\": \"...\", \"code\": \"...\"}`."
        },
        "security": [{ "bearerAuth": [] }],
        "paths": paths(),
        "components": {
            "securitySchemes": {
                "bearerAuth": { "type": "http", "scheme": "bearer", "description": "OIDC token or static admin token" }
            },
            "schemas": schemas()
        }
    })
}
