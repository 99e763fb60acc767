//! `GET /api/targets`: each target with a health probe, a TCP connect to
//! its upstream with a short timeout. Nothing secret is shown: no user,
//! no password.

use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_config::{Target, UpstreamTls};

/// How long a probe waits for the upstream to accept (and resolve).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a probe found.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// `up` (it accepted a TCP connection) or `down`.
    pub status: &'static str,
    /// Time to connect, in milliseconds (when up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A target as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetView {
    /// Name clients use as their database.
    pub name: String,
    /// Environment label.
    pub environment: String,
    /// `host:port`.
    pub upstream: String,
    /// Database on the upstream.
    pub database: String,
    /// TLS mode to the upstream.
    pub tls: &'static str,
    /// The probe.
    pub health: Health,
}

fn tls_mode(t: UpstreamTls) -> &'static str {
    match t {
        UpstreamTls::Disable => "disable",
        UpstreamTls::Prefer => "prefer",
        UpstreamTls::Require => "require",
        UpstreamTls::VerifyFull => "verify-full",
    }
}

/// Connect to `upstream` and close again.
pub async fn probe(upstream: &str, timeout: Duration) -> Health {
    let start = Instant::now();
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(upstream)).await {
        Ok(Ok(stream)) => {
            let elapsed = start.elapsed();
            drop(stream);
            Health {
                status: "up",
                latency_ms: Some((elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0),
                error: None,
            }
        }
        Ok(Err(e)) => Health {
            status: "down",
            latency_ms: None,
            error: Some(e.to_string()),
        },
        Err(_) => Health {
            status: "down",
            latency_ms: None,
            error: Some(format!("no answer within {} ms", timeout.as_millis())),
        },
    }
}

/// Every target with a probe, all probed at once, in config order.
pub async fn list(targets: &[Target]) -> Vec<TargetView> {
    let mut set = tokio::task::JoinSet::new();
    for (i, t) in targets.iter().enumerate() {
        let upstream = t.upstream.clone();
        set.spawn(async move { (i, probe(&upstream, PROBE_TIMEOUT).await) });
    }
    let mut health: Vec<Option<Health>> = vec![None; targets.len()];
    while let Some(joined) = set.join_next().await {
        if let Ok((i, h)) = joined {
            if let Some(slot) = health.get_mut(i) {
                *slot = Some(h);
            }
        }
    }
    targets
        .iter()
        .zip(health)
        .map(|(t, h)| TargetView {
            name: t.name.clone(),
            environment: t.environment.clone(),
            upstream: t.upstream.clone(),
            database: t.database.clone(),
            tls: tls_mode(t.tls),
            health: h.unwrap_or(Health {
                status: "down",
                latency_ms: None,
                error: Some("the probe failed".into()),
            }),
        })
        .collect()
}
