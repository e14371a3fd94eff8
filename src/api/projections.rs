//! `/v1/projections`: where each projection is, how far behind, and
//! rebuilding one without downtime.

use std::sync::Arc;

use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use tracing::{error, info};

use super::params::{ProjectionRule, Text};
use super::problem::ApiError;
use super::ApiTags;
use crate::projections::rebuild::{self, RebuildState, RebuildStatus};
use crate::AppState;

/// A rebuild's progress.
#[derive(Object, Debug, Clone, PartialEq)]
pub struct RebuildView {
    /// The version being built (or built).
    pub version: u32,
    /// `building`, `switching`, `done` or `failed`.
    pub status: String,
    /// Events folded into the new version so far.
    pub done: u64,
    /// Events in the log when the rebuild started.
    pub total: u64,
    pub events_per_second: f64,
    /// Seconds left at the current rate, while building.
    #[oai(nullable)]
    pub eta_seconds: Option<f64>,
    /// Why it failed.
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
}

impl From<&RebuildStatus> for RebuildView {
    fn from(s: &RebuildStatus) -> Self {
        let (status, error) = match &s.state {
            RebuildState::Building => ("building", None),
            RebuildState::Switching => ("switching", None),
            RebuildState::Done => ("done", None),
            RebuildState::Failed(e) => ("failed", Some(e.clone())),
        };
        Self {
            version: s.version,
            status: status.to_owned(),
            done: s.done,
            total: s.total,
            events_per_second: s.rate().round(),
            eta_seconds: s.eta_seconds().map(|e| (e * 10.0).round() / 10.0),
            error,
        }
    }
}

#[derive(Object, Debug, Clone, PartialEq)]
pub struct ProjectionView {
    pub name: String,
    /// The live version of the read model (one more after each rebuild).
    pub version: u32,
    /// The last event applied.
    pub cursor: String,
    /// Whether this instance runs the projector (one instance at a time does).
    pub leader: bool,
    /// `live` (caught up) or `catching_up`.
    pub status: String,
    /// Committed events not applied yet.
    pub events_behind: u64,
    /// Age of the oldest event not applied yet, in milliseconds (0 when caught up).
    pub oldest_unprocessed_age_ms: u64,
    /// Events the projection could not apply, parked (see
    /// `GET /v1/projections/{name}/parked`); 0 when all is well.
    pub parked_events: u64,
    /// The latest rebuild started on this instance, if any.
    #[oai(nullable)]
    pub rebuild: Option<RebuildView>,
}

#[derive(ApiResponse)]
pub enum ProjectionsResponse {
    #[oai(status = 200)]
    Ok(Json<Vec<ProjectionView>>),
}

#[derive(ApiResponse)]
pub enum RebuildResponse {
    /// The rebuild started; follow it in `GET /v1/projections`.
    #[oai(status = 202)]
    Accepted(Json<RebuildView>),
}

pub struct ProjectionsApi {
    pub state: Arc<AppState>,
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Operations")]
impl ProjectionsApi {
    /// Projections
    ///
    /// Each projection's version, cursor and lag (committed events not applied
    /// yet and the age of the oldest), and the progress of a rebuild.
    #[oai(path = "/projections", method = "get", operation_id = "projections")]
    async fn list(&self) -> Result<ProjectionsResponse, ApiError> {
        let mut views = Vec::new();
        for running in self.state.projections.all() {
            let projector = &running.projector;
            let cursor = projector.checkpoint();
            let (behind, oldest) = self.state.log.behind(cursor).await?;
            let age = oldest.map_or(0, |t| {
                (chrono::Utc::now() - t).num_milliseconds().max(0) as u64
            });
            // The rebuild's state before the version: a rebuild that reads as
            // done has switched, so the version read after it is the new one.
            let rebuild = self
                .state
                .rebuilds
                .snapshot()
                .filter(|r| r.projection == running.name())
                .as_ref()
                .map(RebuildView::from);
            let version = running.registered.rebuild.version().await?;
            let parked_events = running.registered.parking.parked_count().await?;
            views.push(ProjectionView {
                name: projector.name.to_owned(),
                version,
                cursor: cursor.to_cursor(),
                leader: projector.is_leader(),
                status: if behind == 0 { "live" } else { "catching_up" }.to_owned(),
                events_behind: behind,
                oldest_unprocessed_age_ms: age,
                parked_events,
                rebuild,
            });
        }
        Ok(ProjectionsResponse::Ok(Json(views)))
    }

    /// Rebuild a projection
    ///
    /// Builds a new version of the read model from the whole event log beside
    /// the live one, switches reads to it once it has caught up, and drops the
    /// old one. The service keeps answering throughout. 409 while a rebuild
    /// runs.
    #[oai(
        path = "/projections/:name/rebuild",
        method = "post",
        operation_id = "rebuildProjection"
    )]
    async fn rebuild(&self, name: Path<Text<ProjectionRule>>) -> Result<RebuildResponse, ApiError> {
        let running = self
            .state
            .projections
            .get(name.0.as_str())
            .map_err(|e| ApiError::not_found(e.to_string()))?;
        let projection = running.name();
        let target = running.registered.rebuild.clone();
        self.state.rebuilds.begin(projection).map_err(|e| {
            ApiError::conflict("rebuild-running", "A rebuild is running", e.to_string())
        })?;
        let state = self.state.clone();
        tokio::spawn(async move {
            info!(projection, "rebuild started");
            match rebuild::run(&*target, &*state.log, &state.rebuilds).await {
                Ok(version) => info!(projection, version, "rebuild switched to the new version"),
                Err(e) => {
                    error!(projection, error = %crate::storage::error_chain(&e), "rebuild failed")
                }
            }
        });
        let status = self
            .state
            .rebuilds
            .snapshot()
            .as_ref()
            .map(RebuildView::from)
            .ok_or_else(|| {
                ApiError::conflict(
                    "rebuild-running",
                    "A rebuild is running",
                    "the rebuild vanished",
                )
            })?;
        Ok(RebuildResponse::Accepted(Json(status)))
    }
}
