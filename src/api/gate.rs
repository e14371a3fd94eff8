//! The gate every request passes: which operation it is (from the OpenAPI
//! document's paths), who is asking (`Authorization: Bearer`), whether that
//! principal may call the operation (`rules`), and whether it is within its
//! rate limit. A request that passes carries its `Principal` to the handler,
//! which checks what only the resource can tell (whose notification it is).
//!
//! Answers: 401 with `WWW-Authenticate` for a missing or bad credential, 403
//! for a valid one without the right, 429 with `Retry-After` past the rate.
//! Every answer to a limited principal carries `RateLimit-Limit`,
//! `RateLimit-Remaining`, `RateLimit-Reset` and `RateLimit-Policy`.

use std::sync::Arc;

use poem::http::{header, HeaderValue, Method, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response};
use serde_json::Value;

use super::context::{RequestContext, ACTOR};
use super::problem::{problem_response, ApiError, Problem};
use super::rules::{self, Rule};
use crate::access::rate::{RateLimits, Verdict};
use crate::access::{bearer, Authority, Principal, Refusal};
use crate::domain::Scope;

/// The stream's upgrade may carry its credential in a first `auth` message
/// instead (browsers cannot set headers on a WebSocket).
pub const STREAM: &str = "stream";

/// Set on a stream upgrade that came without a credential while credentials
/// are enforced: the socket waits for an `auth` message.
#[derive(Debug, Clone, Copy)]
pub struct AuthLater;

struct Route {
    method: Method,
    segments: Vec<String>,
    operation: String,
    /// Its rule, looked up once.
    rule: Option<&'static Rule>,
    /// Where `{user}` sits in the path, if it does.
    user_at: Option<usize>,
}

/// The operations of the document, to find a request's.
pub struct Gate {
    pub authority: Arc<Authority>,
    pub rates: Arc<RateLimits>,
    routes: Vec<Route>,
}

impl Gate {
    pub fn new(document: &Value, authority: Arc<Authority>, rates: Arc<RateLimits>) -> Self {
        let mut routes = Vec::new();
        for (path, item) in document["paths"].as_object().into_iter().flatten() {
            let segments: Vec<String> = path.split('/').map(str::to_owned).collect();
            let user_at = segments.iter().position(|s| s == "{user}");
            for (method, operation) in item.as_object().into_iter().flatten() {
                let (Ok(method), Some(id)) = (
                    Method::from_bytes(method.to_ascii_uppercase().as_bytes()),
                    operation["operationId"].as_str(),
                ) else {
                    continue;
                };
                routes.push(Route {
                    method,
                    segments: segments.clone(),
                    operation: id.to_owned(),
                    rule: rules::rule(id),
                    user_at,
                });
            }
        }
        Self {
            authority,
            rates,
            routes,
        }
    }

    fn route<'a>(&'a self, method: &Method, path: &'a str) -> Option<(&'a Route, Vec<&'a str>)> {
        let segments: Vec<&str> = path.split('/').collect();
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        self.routes
            .iter()
            .find(|r| {
                // A parameter matches an empty segment too: the router may
                // route one, and what it routes must be gated.
                r.method == method && super::spec::template_matches(&r.segments, &segments, true)
            })
            .map(|r| (r, segments))
    }
}

fn unauthorized(refusal: &Refusal) -> Response {
    let mut resp = problem_response(Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Unauthorized",
        refusal.to_string(),
    ));
    // RFC 6750 §3: no error code when the credential is missing.
    let challenge = match refusal {
        Refusal::Missing => r#"Bearer realm="tidings""#.to_owned(),
        Refusal::Malformed => r#"Bearer realm="tidings", error="invalid_request""#.to_owned(),
        other => format!(
            r#"Bearer realm="tidings", error="invalid_token", error_description="{}""#,
            other.to_string().replace('"', "'")
        ),
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

fn forbidden(detail: impl Into<String>) -> Response {
    ApiError::forbidden(detail).into_response()
}

/// Whether `principal` may call an operation under `rule`; the 403 detail
/// otherwise. `path_user`: the `{user}` of the path, decoded.
pub(crate) fn permits(
    principal: &Principal,
    rule: &Rule,
    path_user: Option<&str>,
) -> Result<(), String> {
    match principal {
        Principal::Open => Ok(()),
        Principal::Nobody => Err("no credential was checked".into()),
        Principal::Key(key) => {
            if rule.scopes.iter().any(|s| key.has(*s)) || (rule.own_sends && key.has(Scope::Send)) {
                return Ok(());
            }
            Err(format!(
                "the key `{}` (scopes: {}) may not do this; this takes {}",
                key.name,
                key.scopes
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                rule.describe()
            ))
        }
        Principal::User(token) => {
            let Some(grant) = rule.user else {
                return Err(format!(
                    "a user token may not do this; this takes {}",
                    rule.describe()
                ));
            };
            if !token.grants.contains(&grant) {
                return Err(format!(
                    "this token lacks the `{}` grant",
                    serde_json::to_value(grant)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                ));
            }
            match path_user {
                Some(user) if user != token.user.as_str() => Err(format!(
                    "this token is for user `{}`, not `{user}`",
                    token.user.as_str()
                )),
                _ => Ok(()),
            }
        }
    }
}

fn limited(verdict: &Verdict) -> Response {
    let wait = verdict.retry_after.unwrap_or_default();
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut resp = problem_response(Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "Too many requests",
        format!(
            "this credential may make {} requests a second (bursts of {}); retry in {} s",
            verdict.per_second,
            verdict.limit,
            secs.max(1)
        ),
    ));
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    resp
}

fn rate_headers(resp: &mut Response, verdict: &Verdict) {
    let headers = resp.headers_mut();
    headers.insert("ratelimit-limit", HeaderValue::from(verdict.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(verdict.remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(verdict.reset_secs));
    let window = verdict.limit.div_ceil(verdict.per_second.max(1));
    if let Ok(v) = HeaderValue::from_str(&format!("{};w={window}", verdict.limit)) {
        headers.insert("ratelimit-policy", v);
    }
}

pub async fn with_gate<E: Endpoint>(
    next: E,
    mut req: Request,
    gate: Arc<Gate>,
) -> poem::Result<Response> {
    let Some((route, segments)) = gate.route(req.method(), req.uri().path()) else {
        // Not an operation: the route tree answers 404 or 405.
        return next.call(req).await.map(IntoResponse::into_response);
    };
    let Some(rule) = route.rule else {
        if gate.authority.enforced() {
            return Ok(forbidden(format!(
                "`{}` has no access rule, so nobody may call it",
                route.operation
            )));
        }
        if let Some(ctx) = req.extensions_mut().get_mut::<RequestContext>() {
            ctx.principal = Principal::Open;
        }
        req.extensions_mut().insert(Principal::Open);
        return next.call(req).await.map(IntoResponse::into_response);
    };
    if rule.public {
        return next.call(req).await.map(IntoResponse::into_response);
    }
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().map_err(|_| Refusal::Malformed));
    let credential = match header {
        None => None,
        Some(Err(refusal)) => return Ok(unauthorized(&refusal)),
        Some(Ok(value)) => match bearer(value) {
            Ok(credential) => Some(credential),
            Err(refusal) => return Ok(unauthorized(&refusal)),
        },
    };
    if credential.is_none() && route.operation == STREAM && gate.authority.enforced() {
        req.extensions_mut().insert(AuthLater);
        return next.call(req).await.map(IntoResponse::into_response);
    }
    let principal = match gate.authority.authenticate(credential) {
        Ok(p) => p,
        Err(refusal) => return Ok(unauthorized(&refusal)),
    };
    let path_user = route.user_at.and_then(|i| segments.get(i)).map(|raw| {
        percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned()
    });
    if let Err(detail) = permits(&principal, rule, path_user.as_deref()) {
        return Ok(forbidden(detail));
    }
    let on_behalf_of = match req.headers().get(ACTOR) {
        None => None,
        Some(_) if !principal.has(Scope::Admin) => {
            return Ok(forbidden(
                "X-Actor (acting on someone's behalf) is honoured only from a key with `admin`; drop the header",
            ))
        }
        Some(v) => match v.to_str() {
            Ok(s) if !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()) => {
                Some(s.to_owned())
            }
            _ => {
                return Ok(problem_response(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-request",
                    "Invalid request",
                    "X-Actor must be 1 to 128 visible ASCII characters",
                )))
            }
        },
    };
    let verdict = gate.rates.check(&principal).await;
    if let Some(verdict) = &verdict {
        if verdict.retry_after.is_some() {
            let mut resp = limited(verdict);
            rate_headers(&mut resp, verdict);
            return Ok(resp);
        }
    }
    if let Some(ctx) = req.extensions_mut().get_mut::<RequestContext>() {
        ctx.principal = principal.clone();
        ctx.on_behalf_of = on_behalf_of;
    }
    req.extensions_mut().insert(principal);
    let mut resp = match next.call(req).await {
        Ok(resp) => resp.into_response(),
        Err(err) => err.into_response(),
    };
    if let Some(verdict) = &verdict {
        rate_headers(&mut resp, verdict);
    }
    Ok(resp)
}
