//! The admin router in-process (no sockets): the OpenAPI document names
//! every route, unknown paths and methods get JSON errors, authentication
//! and roles, body limits. End-to-end tests against a running Sluice are in
//! `crates/sluice/tests/admin_api.rs`.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

const ADMIN_TOKEN: &str = "admin-token-for-tests-7f3a9c";
const ADMIN_SHA256: &str = "f51f5253f0aa66226af13f266332538988f36cb3e1b5924ce7b30f232ebd3e2f";
const APPROVER_TOKEN: &str = "approver-token-for-tests-c5d071";
const APPROVER_SHA256: &str = "2c83eddec4dd7c2d36aa9876192f4a36620af2468ec87b5c5a87f3d2a94a3cda";

struct Setup {
    _dir: tempfile::TempDir,
    router: axum::Router,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!(
        r#"[listen]
postgres = "127.0.0.1:0"

[[targets]]
name = "t"
environment = "development"
upstream = "127.0.0.1:1"
database = "app"
user = "u"

[admin]
tokens = [
  {{ name = "ci", role = "admin", token_sha256 = "{ADMIN_SHA256}" }},
  {{ name = "ok-computer", role = "approver", token_sha256 = "{APPROVER_SHA256}" }},
]
"#
    );
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config).expect("write config");
    let state = sluice_proxy::ProxyState::load(&path, &dir.path().join("data"))
        .unwrap_or_else(|e| panic!("{e}"));
    Setup {
        router: sluice_admin::router(state),
        _dir: dir,
    }
}

async fn call(
    router: &axum::Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let response = router
        .clone()
        .oneshot(req.body(Body::from(body)).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned())),
    )
}

#[tokio::test]
async fn the_document_names_every_route_and_each_answers_json() {
    let s = setup();
    let (status, doc) = call(
        &s.router,
        Method::GET,
        "/api/openapi.json",
        Some(ADMIN_TOKEN),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().expect("paths");
    for (path, methods) in [
        ("/api/openapi.json", &["get"][..]),
        ("/api/sessions", &["get"]),
        ("/api/sessions/{id}", &["delete"]),
        ("/api/audit", &["get"]),
        ("/api/usage", &["get"]),
        ("/api/usage/lineage/{table}", &["get"]),
        ("/api/targets", &["get"]),
        ("/api/policy/reload", &["post"]),
        ("/api/policy/validate", &["post"]),
        ("/api/approvals", &["get"]),
        ("/api/approvals/{id}", &["get"]),
        ("/api/approvals/{id}/approve", &["post"]),
        ("/api/approvals/{id}/deny", &["post"]),
        ("/api/approvals/link", &["get"]),
        ("/api/approvals/callback", &["post"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
    ] {
        for m in methods {
            assert!(paths[path][m].is_object(), "{m} {path} is not documented");
        }
    }
    // Every documented operation exists: without a token each /api one is a 401.
    for (path, item) in paths {
        for method in item.as_object().expect("path item").keys() {
            let uri = path.replace("{id}", "abc").replace("{table}", "t");
            let m: Method = method.to_uppercase().parse().expect("method");
            let (status, body) = call(&s.router, m, &uri, None, vec![]).await;
            if item[method]["security"] == serde_json::json!([]) && path.starts_with("/api/") {
                // Signed links and chat callbacks: off without [approvals.webhook].
                assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}");
            } else if path.starts_with("/api/") {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}: {body}");
                assert_eq!(body["code"], "unauthenticated");
            } else {
                assert_eq!(status, StatusCode::OK, "{method} {uri}");
            }
        }
    }
    // Every $ref resolves.
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &r[..r.find('"').expect("end of ref")];
        assert!(doc["components"]["schemas"][name].is_object(), "{name}");
    }
}

#[tokio::test]
async fn unknown_paths_and_methods_are_json_errors() {
    let s = setup();
    let (status, body) = call(
        &s.router,
        Method::GET,
        "/api/nothing",
        Some(ADMIN_TOKEN),
        vec![],
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::NOT_FOUND, &Value::from("not_found"))
    );
    let (status, body) = call(
        &s.router,
        Method::PUT,
        "/api/sessions",
        Some(ADMIN_TOKEN),
        vec![],
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            &Value::from("method_not_allowed")
        ),
        "{body}"
    );
    let (status, _) = call(&s.router, Method::GET, "/healthz", None, vec![]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn roles_and_inputs_are_checked() {
    let s = setup();
    let (status, body) = call(
        &s.router,
        Method::GET,
        "/api/sessions",
        Some(APPROVER_TOKEN),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sessions"], Value::Array(vec![]));
    let (status, body) = call(
        &s.router,
        Method::GET,
        "/api/targets",
        Some(APPROVER_TOKEN),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .starts_with("ok-computer may not"));
    let (status, _) = call(
        &s.router,
        Method::GET,
        "/api/sessions",
        Some("wrong"),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, body) = call(
        &s.router,
        Method::GET,
        "/api/sessions?x=1",
        Some(ADMIN_TOKEN),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = call(
        &s.router,
        Method::DELETE,
        "/api/sessions/0123456789abcdef",
        Some(ADMIN_TOKEN),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = call(
        &s.router,
        Method::DELETE,
        "/api/sessions/a%2Fb",
        Some(ADMIN_TOKEN),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // The target's upstream is a closed port: down.
    let (status, body) = call(
        &s.router,
        Method::GET,
        "/api/targets",
        Some(ADMIN_TOKEN),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["targets"][0]["health"]["status"], "down", "{body}");

    // The audit store of this process answers (empty or not).
    let (status, body) = call(
        &s.router,
        Method::GET,
        "/api/audit?limit=5&text=%22%2A",
        Some(ADMIN_TOKEN),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(
        &s.router,
        Method::GET,
        "/api/usage?since=2024-01-01&until=2024-01-01T00:00:00%2B02:00",
        Some(ADMIN_TOKEN),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Policy text: too large, not UTF-8, a bad file name.
    let big = vec![b' '; sluice_admin::api::MAX_POLICY_BYTES + 1];
    let (status, body) = call(
        &s.router,
        Method::POST,
        "/api/policy/validate",
        Some(ADMIN_TOKEN),
        big,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["code"], "payload_too_large");
    let (status, _) = call(
        &s.router,
        Method::POST,
        "/api/policy/validate",
        Some(ADMIN_TOKEN),
        vec![0xff, 0xfe],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(
        &s.router,
        Method::POST,
        "/api/policy/validate?replaces=..%2Fx.cedar",
        Some(ADMIN_TOKEN),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = call(
        &s.router,
        Method::POST,
        "/api/policy/validate",
        Some(ADMIN_TOKEN),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = call(
        &s.router,
        Method::POST,
        "/api/policy/validate",
        Some(ADMIN_TOKEN),
        b"// nothing yet\n".to_vec(),
    )
    .await;
    assert_eq!(
        (status, &body["policies"]),
        (StatusCode::OK, &Value::from(0)),
        "{body}"
    );
}
