//! Liveness and readiness for load balancers and orchestrators.

use std::sync::Arc;

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::ApiTags;
use crate::memory_limit::Pressure;
use crate::AppState;

#[derive(Object, Debug, Clone)]
pub struct HealthView {
    /// `live`, `ready`, `degraded` or `unavailable`.
    pub status: String,
    /// `memory` or `postgres`.
    pub storage: String,
    /// Why the instance is not ready, when it is not.
    #[oai(skip_serializing_if_is_none)]
    pub detail: Option<String>,
    /// Where the inbox projection has got to.
    pub inbox_cursor: String,
    /// Whether this instance runs the inbox projector now.
    pub inbox_leader: bool,
    /// `up` or `down`; absent without REDIS_URL.
    #[oai(skip_serializing_if_is_none)]
    pub redis: Option<String>,
    /// Open stream connections on this instance.
    pub stream_connections: u64,
    /// Requests being answered now (health checks aside), and the cap.
    pub requests_in_flight: u64,
    pub max_concurrent_requests: u64,
    /// How far each projector is behind the log (readiness only).
    #[oai(skip_serializing_if_is_none)]
    pub projections: Option<Vec<ProjectionLag>>,
    /// Resident memory, in MiB.
    pub memory_used_mb: u64,
    /// The memory limit, in MiB; absent when there is none.
    #[oai(skip_serializing_if_is_none)]
    pub memory_limit_mb: Option<u64>,
    /// What this instance's timers fired since it started, and how late.
    pub timers: TimersView,
    /// `enforced` (credentials are checked) or `open` (none is configured:
    /// every request may do everything).
    pub access: String,
    /// Said while access is open.
    #[oai(skip_serializing_if_is_none)]
    pub access_warning: Option<String>,
}

/// Scheduled deliveries fired by this instance since it started.
#[derive(Object, Debug, Clone)]
pub struct TimersView {
    pub fired: u64,
    /// Fired more than a second after their `deliver_at`.
    pub late: u64,
    /// How long after `deliver_at` they were fired, in milliseconds.
    pub lateness_p50_ms: u64,
    pub lateness_p99_ms: u64,
    pub lateness_max_ms: u64,
}

/// A projector's lag, as readiness sees it.
#[derive(Object, Debug, Clone)]
pub struct ProjectionLag {
    pub name: String,
    /// Committed events not applied yet.
    pub events_behind: u64,
    /// Age of the oldest of them, in milliseconds (0 when none).
    pub oldest_unprocessed_age_ms: u64,
    /// Older than `--ready-max-lag-ms`: stuck, or far behind.
    pub stuck: bool,
}

#[derive(ApiResponse)]
pub enum HealthResponse {
    #[oai(status = 200)]
    Ok(Json<HealthView>),
    /// The event store does not answer.
    #[oai(status = 503)]
    Unavailable(Json<HealthView>),
}

pub struct HealthApi {
    pub state: Arc<AppState>,
}

#[OpenApi(tag = "ApiTags::Operations")]
impl HealthApi {
    /// Liveness
    ///
    /// The process is up and serving HTTP.
    #[oai(path = "/health/live", method = "get", operation_id = "live")]
    async fn live(&self) -> HealthResponse {
        HealthResponse::Ok(Json(self.view("live", None)))
    }

    /// Readiness
    ///
    /// The event store answers a round trip (503 otherwise). The instance
    /// still serves, but says `degraded` (200), when Redis is configured and
    /// down (other instances' subscribers get updates from the update log),
    /// when a projector's oldest unapplied event is older than
    /// `--ready-max-lag-ms` (reads are stale; `projections` names it and its
    /// lag), or when memory is past 90% of the limit. Not 503: taking every
    /// instance out of a load balancer for a stuck projector would stop
    /// commands too.
    #[oai(path = "/health/ready", method = "get", operation_id = "ready")]
    async fn ready(&self) -> HealthResponse {
        if let Err(e) = self.state.commands.ping().await {
            return HealthResponse::Unavailable(Json(
                self.view("unavailable", Some(crate::storage::error_chain(&e))),
            ));
        }
        let mut view = self.view("ready", None);
        let mut problems = Vec::new();
        if view.redis.as_deref() == Some("down") {
            problems.push(
                "Redis is unreachable: other instances' subscribers get updates late, from the update log"
                    .to_owned(),
            );
        }
        match projection_lags(&self.state).await {
            Ok(lag) => {
                for p in lag.iter().filter(|p| p.stuck) {
                    problems.push(format!(
                        "projector {} is {} events behind; the oldest has waited {} ms",
                        p.name, p.events_behind, p.oldest_unprocessed_age_ms
                    ));
                }
                view.projections = Some(lag);
            }
            Err(e) => problems.push(format!(
                "the projectors' lag is unknown: {}",
                crate::storage::error_chain(&e)
            )),
        }
        match self.state.memory.pressure() {
            Pressure::Fine => {}
            Pressure::High => problems.push(format!(
                "memory is past 90% of the limit ({} of {} MiB)",
                view.memory_used_mb,
                view.memory_limit_mb.unwrap_or(0)
            )),
            Pressure::Full => problems.push(format!(
                "memory is at the limit ({} of {} MiB): the memory store takes no new events",
                view.memory_used_mb,
                view.memory_limit_mb.unwrap_or(0)
            )),
        }
        if !problems.is_empty() {
            view.status = "degraded".into();
            view.detail = Some(problems.join("; "));
        }
        HealthResponse::Ok(Json(view))
    }
}

impl HealthApi {
    fn view(&self, status: &str, detail: Option<String>) -> HealthView {
        HealthView {
            status: status.to_owned(),
            storage: self.state.storage.to_owned(),
            detail,
            inbox_cursor: self
                .state
                .projections
                .inbox()
                .projector
                .checkpoint()
                .to_cursor(),
            inbox_leader: self.state.projections.inbox().projector.is_leader(),
            redis: self
                .state
                .streams
                .fanout
                .as_ref()
                .map(|f| if f.is_up() { "up" } else { "down" }.to_owned()),
            stream_connections: self.state.streams.router.connections() as u64,
            requests_in_flight: self.state.request_limits.in_flight() as u64,
            max_concurrent_requests: self.state.request_limits.max_in_flight as u64,
            projections: None,
            memory_used_mb: self.state.memory.used() >> 20,
            memory_limit_mb: self.state.memory.limit().map(|l| l >> 20),
            access: if self.state.access.enforced() {
                "enforced"
            } else {
                "open"
            }
            .to_owned(),
            access_warning: (!self.state.access.enforced()).then(|| {
                "ACCESS IS OPEN: no API keys and no user-token key are configured, so every \
                 request may do everything; create a key (`tidings keys create`) before exposing \
                 tidings"
                    .to_owned()
            }),
            timers: {
                let r = self.state.timers.report();
                TimersView {
                    fired: r.fired,
                    late: r.late,
                    lateness_p50_ms: r.lateness_p50_ms,
                    lateness_p99_ms: r.lateness_p99_ms,
                    lateness_max_ms: r.lateness_max_ms,
                }
            },
        }
    }
}

/// How far each projector of this instance is behind the log.
pub async fn projection_lags(
    state: &AppState,
) -> Result<Vec<ProjectionLag>, crate::storage::StorageError> {
    let mut lags = Vec::new();
    for running in state.projections.all() {
        let projector = &running.projector;
        let (behind, oldest) = state.log.behind(projector.checkpoint()).await?;
        let age = oldest.map_or(0, |t| {
            (chrono::Utc::now() - t).num_milliseconds().max(0) as u64
        });
        lags.push(ProjectionLag {
            name: projector.name.to_owned(),
            events_behind: behind,
            oldest_unprocessed_age_ms: age,
            stuck: age > state.ready_max_lag.as_millis() as u64,
        });
    }
    Ok(lags)
}
