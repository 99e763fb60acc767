//! Small blocking HTTP client for talking to identity providers (discovery,
//! JWKS, device authorization, token endpoint): `ureq` over rustls.
//!
//! Blocking on purpose: it is used rarely (a cache miss, a login) and from
//! async code it runs under `spawn_blocking`. An `http://` URL is accepted
//! only for a loopback host, so keys and tokens never cross a network in
//! clear; redirects are not followed, so an `https` URL cannot be bounced
//! to `http`.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

/// Timeout of one whole request.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body read.
const MAX_BODY: u64 = 1 << 20;

/// Whether `url` may be used: `https://`, or `http://` to a loopback host.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Ok(());
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!("{url:?} is not an http(s) URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(format!(
            "{url:?} uses http:// for a host that is not loopback; use https://"
        ))
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .max_redirects(0)
        .http_status_as_error(false)
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// An HTTP answer: status and JSON body (`Value::Null` if the body was not JSON).
#[derive(Debug, Clone)]
pub struct JsonResponse {
    /// HTTP status.
    pub status: u16,
    /// Parsed body.
    pub body: Value,
}

fn read(mut resp: ureq::http::Response<ureq::Body>, url: &str) -> Result<JsonResponse, String> {
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .map_err(|e| format!("{url}: cannot read the answer: {e}"))?;
    Ok(JsonResponse {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    })
}

/// GET a JSON document; non-2xx is an error.
pub fn get_json(url: &str) -> Result<Value, String> {
    check_url(url)?;
    let resp = agent()
        .get(url)
        .header("accept", "application/json")
        .call()
        .map_err(|e| format!("{url}: {e}"))?;
    let r = read(resp, url)?;
    if !(200..300).contains(&r.status) {
        return Err(format!("{url}: HTTP status {}", r.status));
    }
    if r.body.is_null() {
        return Err(format!("{url}: the answer is not JSON"));
    }
    Ok(r.body)
}

/// POST a form and read the JSON answer, whatever the status (OAuth error
/// answers are JSON with status 400).
pub fn post_form(url: &str, form: &[(&str, &str)]) -> Result<JsonResponse, String> {
    check_url(url)?;
    let resp = agent()
        .post(url)
        .header("accept", "application/json")
        .send_form(form.iter().copied())
        .map_err(|e| format!("{url}: {e}"))?;
    read(resp, url)
}

/// POST a JSON document (a webhook); returns the status. A non-2xx status
/// is an error naming it.
pub fn post_json(url: &str, body: &Value) -> Result<u16, String> {
    check_url(url)?;
    let resp = agent()
        .post(url)
        .header("content-type", "application/json")
        .send(body.to_string())
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(format!("{url}: HTTP status {status}"));
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_only_on_loopback() {
        assert!(check_url("https://login.example.com/").is_ok());
        assert!(check_url("http://127.0.0.1:8080/x").is_ok());
        assert!(check_url("http://localhost/x").is_ok());
        assert!(check_url("http://[::1]:80/").is_ok());
        assert!(check_url("http://login.example.com/").is_err());
        assert!(check_url("http://10.0.0.1/").is_err());
        assert!(check_url("http://127.0.0.1.evil.com/").is_err());
        assert!(check_url("ftp://x").is_err());
    }
}
