//! Bounded waiting for every request: a cap on requests in flight (past it,
//! 503 with `Retry-After` at once, rather than a queue that grows) and a
//! per-request timeout (503 when the answer takes longer). Health checks
//! are not counted: an orchestrator must see a busy instance as alive.
//! A streamed body (an NDJSON export) and a WebSocket stream are bound by
//! neither once their answer has started.

use std::sync::Arc;
use std::time::Duration;

use poem::http::{HeaderValue, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response};
use tokio::sync::Semaphore;

use super::problem::{problem_response, Problem};

#[derive(Debug)]
pub struct RequestLimits {
    pub timeout: Duration,
    pub max_in_flight: usize,
    permits: Semaphore,
}

impl RequestLimits {
    pub fn new(timeout: Duration, max_in_flight: usize) -> Arc<Self> {
        Arc::new(Self {
            timeout,
            max_in_flight,
            permits: Semaphore::new(max_in_flight),
        })
    }

    /// Requests being answered now (health checks aside).
    pub fn in_flight(&self) -> usize {
        self.max_in_flight
            .saturating_sub(self.permits.available_permits())
    }
}

fn busy(slug: &str, title: &str, detail: String) -> Response {
    let mut resp = problem_response(Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        slug,
        title,
        detail,
    ));
    resp.headers_mut()
        .insert("retry-after", HeaderValue::from_static("1"));
    resp
}

pub async fn with_limits<E: Endpoint>(
    next: E,
    req: Request,
    limits: Arc<RequestLimits>,
) -> poem::Result<Response> {
    if req.uri().path().starts_with("/health/") {
        return next.call(req).await.map(IntoResponse::into_response);
    }
    let Ok(_permit) = limits.permits.try_acquire() else {
        return Ok(busy(
            "overloaded",
            "Too many requests at once",
            format!(
                "tidings is answering {} requests already; retry shortly",
                limits.max_in_flight
            ),
        ));
    };
    match tokio::time::timeout(limits.timeout, next.call(req)).await {
        Ok(result) => result.map(IntoResponse::into_response),
        Err(_) => Ok(busy(
            "timeout",
            "Request timed out",
            format!(
                "the answer took longer than {} ms; retry shortly",
                limits.timeout.as_millis()
            ),
        )),
    }
}
