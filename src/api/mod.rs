//! The HTTP surface: poem-openapi services composed into one route tree, with
//! the Swagger UI at `/docs` and the spec at `/openapi.json`. Errors of every
//! origin leave as `application/problem+json`.

pub mod analytics;
pub mod batches;
pub mod batching;
pub mod bulk;
pub mod categories;
pub mod context;
pub mod create;
pub mod events;
pub mod experiments;
pub mod explain;
pub mod gate;
pub mod health;
pub mod inbox;
pub mod json;
pub mod keys;
pub mod limits;
pub mod notifications;
pub mod params;
pub mod parked;
pub mod preferences;
pub mod problem;
pub mod projections;
pub mod prometheus;
pub mod recipients;
pub mod rules;
pub mod spec;
pub mod state;
pub mod stream;
pub mod templates;
pub mod tenants;
pub mod topics;
pub mod views;

use std::sync::Arc;

use poem::endpoint::BoxEndpoint;
use poem::middleware::CatchPanic;
use poem::{EndpointExt, IntoResponse, Response, Route};
use poem_openapi::{OpenApiService, Tags};

use self::problem::{ApiError, Problem};
use crate::projections::engine::ProjectorHandle;
use crate::storage::Position;
use crate::AppState;

#[derive(Tags)]
pub enum ApiTags {
    /// Create notifications and change their state.
    Notifications,
    /// Each user's inbox.
    Inbox,
    /// The event log: audit and export.
    Events,
    /// Live updates over WebSocket.
    Streams,
    /// Counts, rates and latencies per time bucket; the health score.
    Analytics,
    /// Recipients: profiles, preferences.
    Recipients,
    /// Server API keys and user tokens.
    Access,
    /// Content: versioned templates and A/B experiments.
    Templates,
    /// Health checks.
    Operations,
}

/// The recipient side: profiles, preferences, categories (and their
/// batching), tenants, topics
/// (a tuple of its own: poem-openapi's tuples stop at sixteen).
pub type RecipientApis = (
    recipients::RecipientsApi,
    preferences::PreferencesApi,
    categories::CategoriesApi,
    batching::BatchingApi,
    batching::BatchingSimulationApi,
    tenants::TenantsApi,
    topics::TopicsApi,
);

/// Content: templates and experiments (a tuple of their own, for the same
/// reason).
pub type ContentApis = (templates::TemplatesApi, experiments::ExperimentsApi);

pub type Apis = (
    notifications::NotificationsApi,
    explain::ExplainApi,
    inbox::InboxApi,
    bulk::BulkApi,
    batches::BatchesApi,
    RecipientApis,
    ContentApis,
    analytics::AnalyticsApi,
    events::EventsApi,
    projections::ProjectionsApi,
    parked::ParkedApi,
    stream::StreamApi,
    keys::KeysApi,
    health::HealthApi,
    prometheus::MetricsApi,
    spec::DocsApi,
);

pub fn openapi(state: Arc<AppState>, published: spec::Published) -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            notifications::NotificationsApi {
                state: state.clone(),
            },
            explain::ExplainApi {
                state: state.clone(),
            },
            inbox::InboxApi {
                state: state.clone(),
            },
            bulk::BulkApi {
                state: state.clone(),
            },
            batches::BatchesApi {
                state: state.clone(),
            },
            (
                recipients::RecipientsApi {
                    state: state.clone(),
                },
                preferences::PreferencesApi {
                    state: state.clone(),
                },
                categories::CategoriesApi {
                    state: state.clone(),
                },
                batching::BatchingApi {
                    state: state.clone(),
                },
                batching::BatchingSimulationApi {
                    state: state.clone(),
                },
                tenants::TenantsApi {
                    state: state.clone(),
                },
                topics::TopicsApi {
                    state: state.clone(),
                },
            ),
            (
                templates::TemplatesApi {
                    state: state.clone(),
                },
                experiments::ExperimentsApi {
                    state: state.clone(),
                },
            ),
            analytics::AnalyticsApi {
                state: state.clone(),
            },
            events::EventsApi {
                state: state.clone(),
            },
            projections::ProjectionsApi {
                state: state.clone(),
            },
            parked::ParkedApi {
                state: state.clone(),
            },
            stream::StreamApi {
                state: state.clone(),
            },
            keys::KeysApi {
                state: state.clone(),
            },
            health::HealthApi {
                state: state.clone(),
            },
            prometheus::MetricsApi { state },
            spec::DocsApi { published },
        ),
        "tidings",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Event-sourced notification service. Every accepted command is recorded as \
         immutable events; the inbox is a projection of the global event log. Commands \
         answer with a `cursor`: pass it as `min_position` to a query to read your own write. \
         Errors are `application/problem+json`.\n\n\
         **Access.** Send `Authorization: Bearer <credential>`: a server API key (`tdk_…`, \
         scopes `send`, `read`, `admin`) or a user token (a JWT for one user: that user's \
         inbox, notifications and topics only). Each operation says who may call it. 401 \
         (with `WWW-Authenticate`) when the credential is missing or not valid, 403 when it \
         lacks the right, 429 (with `Retry-After`) past its rate limit; `RateLimit-*` headers \
         on every answer to a limited credential. With no keys and no token key configured \
         tidings is open (loopback only) and every request may do everything.\n\n\
         **Streams.** `GET /v1/stream?topics=inbox:{user},notification:{id}&cursor={cursor}` \
         upgrades to a WebSocket of live updates (`inbox:{user}`: rows `created`, `changed`, \
         `removed` and the `counts`; `notification:{id}`: the row; `analytics`: the current \
         minute's counters (`minute`) and the health score (`health`) as they change). Every server message is JSON \
         with a `type`: `subscribed`, `update` (`cursor`, `topic`, `kind`, `data` = the row as \
         REST returns it), `resync` (fetch over REST, continue from the fresh `cursor`), \
         `unsubscribed`, `authenticated`, `error`. Clients may send `{\"type\":\"subscribe\",\"topics\":[...],\
         \"cursor\":\"...\"}`, `{\"type\":\"unsubscribe\",\"topics\":[...]}` and \
         `{\"type\":\"auth\",\"token\":\"...\"}` (the credential, first, when the upgrade could \
         not carry an Authorization header; later, a fresh token before the old one's 30 s grace ends). Reconnect with \
         the `cursor` of the last update received to get every update missed, in order, once. \
         Close codes: 1013 connection limit reached (overall or for one address), 4000 slow \
         consumer (resync), 4401 no valid credential (none within 10 s, bad, or expired), 1008 too many messages, 1001 going away. At most 100 topics per \
         connection; subscribe messages at most 5 a second (bursts of 20). The messages' JSON Schema is `openapi/stream-messages.schema.json`.",
    )
}

/// The OpenAPI document as served at /openapi.json (and committed).
pub fn document(api: &OpenApiService<Apis, ()>) -> serde_json::Value {
    let generated = serde_json::from_str(&api.spec()).unwrap_or_default();
    let mut document = spec::complete(generated);
    rules::declare(&mut document);
    document
}

/// The document as text, as committed in openapi/openapi.json.
pub fn document_text(state: Arc<AppState>) -> String {
    let api = openapi(state, spec::Published::default());
    serde_json::to_string_pretty(&document(&api)).unwrap_or_default()
}

/// The whole app: API, docs, spec, middleware. Boxed twice on the way out:
/// the middleware nest so deeply that, unboxed, the layout of the request
/// future takes the compiler past its query depth.
pub fn routes(state: Arc<AppState>, body_limit: usize) -> BoxEndpoint<'static, Response> {
    let limits = state.request_limits.clone();
    let published = spec::Published::default();
    let api = openapi(state.clone(), published.clone());
    let document = document(&api);
    let methods = Arc::new(spec::Methods::of(&document));
    let gate = Arc::new(gate::Gate::new(
        &document,
        state.access.clone(),
        state.rates.clone(),
    ));
    published.set(document, api.swagger_ui_html());
    Route::new()
        .nest("/", api)
        .around(move |next, req| spec::with_allow(next, req, methods.clone()))
        .data(json::BodyLimit(body_limit))
        .catch_all_error(problem::problem_from_error)
        .around(move |next, req| limits::with_limits(next, req, limits.clone()))
        .around(move |next, req| gate::with_gate(next, req, gate.clone()))
        // Around the gate too: a panic anywhere below answers 500.
        .with(CatchPanic::new().with_handler(|_| {
            tracing::error!("a request handler panicked");
            problem::problem_response(Problem::new(
                poem::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "tidings failed to handle this request; the cause is logged under its X-Request-Id",
            ))
            .into_response()
        }))
        .map_to_response()
        .boxed()
        .around(context::with_request_context)
        .around(prometheus::measured)
        .with_if(!state.cors_origins.is_empty(), cors(&state.cors_origins))
        .map_to_response()
        .boxed()
}

/// CORS for the configured origins only: browsers holding a user token call
/// the inbox and its commands directly. No cookies are used, so no
/// credentials mode; the headers a client sends and reads are listed.
fn cors(origins: &[String]) -> poem::middleware::Cors {
    poem::middleware::Cors::new()
        .allow_origins(origins.iter().map(String::as_str))
        .allow_methods(["GET", "POST", "PUT", "PATCH", "DELETE"])
        .allow_headers([
            "authorization",
            "content-type",
            "idempotency-key",
            "x-request-id",
            "x-correlation-id",
        ])
        .expose_headers([
            "location",
            "retry-after",
            "idempotent-replayed",
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
            "ratelimit-policy",
            "x-request-id",
            "x-correlation-id",
            "www-authenticate",
        ])
        .max_age(600)
}

/// A page size from the `limit` query parameter: `default` when absent,
/// refused (naming the range) outside 1..=`max`.
pub fn page_limit(limit: Option<i64>, default: i64, max: i64) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::invalid(
            "query.limit",
            format!("{limit} is out of range; use 1 to {max}"),
        ));
    }
    Ok(limit as usize)
}

/// Waits until `projector`, the projection a query reads, has reached
/// `min_position`, if one is given.
pub async fn wait_for(
    state: &AppState,
    projector: &ProjectorHandle,
    min_position: Option<&str>,
) -> Result<(), ApiError> {
    let Some(raw) = min_position else {
        return Ok(());
    };
    let position = Position::parse_cursor(raw)
        .map_err(|e| ApiError::invalid("query.min_position", e.to_string()))?;
    if projector.checkpoint() >= position {
        return Ok(());
    }
    // A position no command answered with would be waited for in vain.
    if !state.log.reaches(position).await? {
        return Err(ApiError::invalid(
            "query.min_position",
            format!(
                "`{raw}` is beyond the end of the event log; pass the `cursor` of a command's answer"
            ),
        ));
    }
    if projector.wait_for(position, state.read_wait).await {
        Ok(())
    } else {
        Err(ApiError::unavailable(format!(
            "the {} projection has not reached min_position within {} ms; retry shortly",
            projector.name,
            state.read_wait.as_millis()
        )))
    }
}
