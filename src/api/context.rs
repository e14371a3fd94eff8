//! Request context: `X-Request-Id` and `X-Correlation-Id` are taken from the
//! request when they are sensible (generated otherwise), echoed on the
//! response, put on the request's tracing span and recorded in every event's
//! metadata. Who is asking is the gate's to say (`gate`).

use std::time::Instant;

use poem::http::HeaderValue;
use poem::{Endpoint, IntoResponse, Request, Response};
use tracing::{debug, info_span, Instrument};

use crate::access::Principal;

pub const REQUEST_ID: &str = "x-request-id";
pub const CORRELATION_ID: &str = "x-correlation-id";
pub const ACTOR: &str = "x-actor";

#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub correlation_id: String,
    /// Who is asking, as the gate authenticated them (`Nobody`, with no
    /// right, until it has).
    pub principal: Principal,
    /// `X-Actor`, from a principal allowed to act on someone's behalf.
    pub on_behalf_of: Option<String>,
}

/// A header value we are willing to store: 1–128 visible ASCII characters.
fn usable(req: &Request, name: &str) -> Option<String> {
    let value = req.headers().get(name)?.to_str().ok()?;
    let ok = !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| value.to_owned())
}

pub async fn with_request_context<E: Endpoint>(
    next: E,
    mut req: Request,
) -> poem::Result<Response> {
    let request_id = usable(&req, REQUEST_ID).unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let correlation_id = usable(&req, CORRELATION_ID).unwrap_or_else(|| request_id.clone());
    let ctx = RequestContext {
        request_id: request_id.clone(),
        correlation_id: correlation_id.clone(),
        principal: Principal::Nobody,
        on_behalf_of: None,
    };
    let span = info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %request_id,
        correlation_id = %correlation_id,
    );
    req.extensions_mut().insert(ctx);
    let started = Instant::now();
    let result = next.call(req).instrument(span.clone()).await;
    let mut resp = match result {
        Ok(resp) => resp.into_response(),
        Err(err) => err.into_response(),
    };
    let headers = resp.headers_mut();
    // Both ids passed `usable` or are UUIDs, so they are valid header values.
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(REQUEST_ID, v);
    }
    if let Ok(v) = HeaderValue::from_str(&correlation_id) {
        headers.insert(CORRELATION_ID, v);
    }
    span.in_scope(|| {
        debug!(
            status = resp.status().as_u16(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "request finished"
        )
    });
    Ok(resp)
}
