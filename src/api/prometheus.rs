//! `GET /metrics`: Prometheus text exposition of what tidings counts as it
//! goes (requests, commands, conflicts, appended events, timers fired,
//! stream deliveries and slow consumers dropped) and of what it reads at
//! scrape time (projection lag and parked events, due timers and their
//! lateness, stream connections, the database pool).
//!
//! Labels come from closed sets (operation ids, methods, status codes,
//! command and projection names), so no request can grow the series.

use std::sync::Arc;
use std::time::Instant;

use poem::http::Method;
use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::payload::PlainText;
use poem_openapi::{ApiResponse, OpenApi, OperationId};

use super::ApiTags;
use crate::AppState;

/// Counts a request and times it, by operation, method and status.
pub async fn measured<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let resp = match next.call(req).await {
        Ok(resp) => resp.into_response(),
        Err(err) => err.into_response(),
    };
    let operation = resp.data::<OperationId>().map_or("unmatched", |o| o.0);
    let status = resp.status().as_u16().to_string();
    metrics::counter!("tidings_http_requests_total", "operation" => operation, "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("tidings_http_request_duration_seconds", "operation" => operation, "method" => method)
        .record(started.elapsed().as_secs_f64());
    Ok(resp)
}

#[derive(ApiResponse)]
pub enum MetricsResponse {
    /// Prometheus text exposition format 0.0.4.
    #[oai(status = 200, content_type = "text/plain; version=0.0.4")]
    Ok(PlainText<String>),
}

pub struct MetricsApi {
    pub state: Arc<AppState>,
}

#[OpenApi(tag = "ApiTags::Operations")]
impl MetricsApi {
    /// Metrics
    ///
    /// Prometheus metrics of this process: requests by operation, method and
    /// status (`tidings_http_requests_total`, `..._duration_seconds`),
    /// commands by type and outcome, conflicts, events appended, each
    /// projection's lag and parked events, timers, stream connections,
    /// deliveries and slow consumers dropped, and the database pool.
    #[oai(path = "/metrics", method = "get", operation_id = "metrics")]
    async fn metrics(&self) -> MetricsResponse {
        self.read_gauges().await;
        let handle = crate::telemetry::metrics();
        handle.run_upkeep();
        MetricsResponse::Ok(PlainText(handle.render()))
    }
}

/// Due deliveries counted at most this far (the gauge saturates there).
const DUE_COUNTED: usize = 10_000;

impl MetricsApi {
    /// Sets what is read rather than counted. A source that does not answer
    /// (the database down) leaves its gauges as they were last read.
    async fn read_gauges(&self) {
        let state = &self.state;
        for running in state.projections.all() {
            let name = running.name();
            let projector = &running.projector;
            if let Ok((behind, oldest)) = state.log.behind(projector.checkpoint()).await {
                let age = oldest.map_or(0.0, |t| {
                    (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
                });
                metrics::gauge!("tidings_projection_events_behind", "projection" => name)
                    .set(behind as f64);
                metrics::gauge!("tidings_projection_lag_seconds", "projection" => name).set(age);
            }
            if let Ok(parked) = running.registered.parking.parked_count().await {
                metrics::gauge!("tidings_projection_parked_events", "projection" => name)
                    .set(parked as f64);
            }
            metrics::gauge!("tidings_projection_leader", "projection" => name)
                .set(if projector.is_leader() { 1.0 } else { 0.0 });
        }
        let timers = state.timers.report();
        for (quantile, ms) in [
            ("0.5", timers.lateness_p50_ms),
            ("0.99", timers.lateness_p99_ms),
            ("1", timers.lateness_max_ms),
        ] {
            metrics::gauge!("tidings_timers_lateness_seconds", "quantile" => quantile)
                .set(ms as f64 / 1000.0);
        }
        let now = chrono::Utc::now().timestamp_millis();
        if let Ok(due) = state
            .schedule
            .range(i64::MIN, now + 1, None, DUE_COUNTED)
            .await
        {
            metrics::gauge!("tidings_timers_due").set(due.len() as f64);
        }
        let router = &state.streams.router;
        metrics::gauge!("tidings_stream_connections").set(router.connections() as f64);
        if let Some(pool) = &state.pool {
            pool_gauges("tidings_db_pool", pool);
        }
        if let Some(pool) = &state.projector_pool {
            pool_gauges("tidings_db_projector_pool", pool);
        }
    }
}

/// A pool's utilisation, as `{name}_connections`, `_available`, `_max` and `_waiting`.
fn pool_gauges(name: &str, pool: &deadpool_postgres::Pool) {
    let status = pool.status();
    for (series, value) in [
        ("connections", status.size),
        ("available", status.available),
        ("max", status.max_size),
        ("waiting", status.waiting),
    ] {
        metrics::gauge!(format!("{name}_{series}")).set(value as f64);
    }
}
