//! `GET /v1/projections`: where each projection is and how far behind.

use std::sync::Arc;

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::problem::ApiError;
use super::ApiTags;
use crate::AppState;

#[derive(Object, Debug, Clone, PartialEq)]
pub struct ProjectionView {
    pub name: String,
    /// The layout version of the read model.
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
}

#[derive(ApiResponse)]
pub enum ProjectionsResponse {
    #[oai(status = 200)]
    Ok(Json<Vec<ProjectionView>>),
}

pub struct ProjectionsApi {
    pub state: Arc<AppState>,
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Operations")]
impl ProjectionsApi {
    /// Projections
    ///
    /// Each projection's cursor and lag: how many committed events it has
    /// not applied yet and how old the oldest of them is.
    #[oai(path = "/projections", method = "get", operation_id = "projections")]
    async fn list(&self) -> Result<ProjectionsResponse, ApiError> {
        let projector = &self.state.inbox_projector;
        let cursor = projector.checkpoint();
        let (behind, oldest) = self.state.log.behind(cursor).await?;
        let age = oldest.map_or(0, |t| {
            (chrono::Utc::now() - t).num_milliseconds().max(0) as u64
        });
        Ok(ProjectionsResponse::Ok(Json(vec![ProjectionView {
            name: projector.name.to_owned(),
            version: 1,
            cursor: cursor.to_cursor(),
            leader: projector.is_leader(),
            status: if behind == 0 { "live" } else { "catching_up" }.to_owned(),
            events_behind: behind,
            oldest_unprocessed_age_ms: age,
        }])))
    }
}
