//! Liveness and readiness for load balancers and orchestrators.

use std::sync::Arc;

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::ApiTags;
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
    /// The event store answers a round trip. With Redis configured but down the
    /// instance still serves (its own subscribers live, others through the
    /// update log): `degraded`, still 200.
    #[oai(path = "/health/ready", method = "get", operation_id = "ready")]
    async fn ready(&self) -> HealthResponse {
        if let Err(e) = self.state.commands.ping().await {
            return HealthResponse::Unavailable(Json(
                self.view("unavailable", Some(e.to_string())),
            ));
        }
        let mut view = self.view("ready", None);
        if view.redis.as_deref() == Some("down") {
            view.status = "degraded".into();
            view.detail = Some(
                "Redis is unreachable: other instances' subscribers get updates late, from the update log"
                    .into(),
            );
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
            inbox_cursor: self.state.inbox_projector.checkpoint().to_cursor(),
            inbox_leader: self.state.inbox_projector.is_leader(),
            redis: self
                .state
                .streams
                .fanout
                .as_ref()
                .map(|f| if f.is_up() { "up" } else { "down" }.to_owned()),
            stream_connections: self.state.streams.router.connections() as u64,
        }
    }
}
