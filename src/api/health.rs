//! Liveness and readiness for load balancers and orchestrators.

use std::sync::Arc;

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::ApiTags;
use crate::AppState;

#[derive(Object, Debug, Clone)]
pub struct HealthView {
    /// `live`, `ready` or `unavailable`.
    pub status: String,
    /// `memory` or `postgres`.
    pub storage: String,
    /// Why the instance is not ready, when it is not.
    #[oai(skip_serializing_if_is_none)]
    pub detail: Option<String>,
    /// Where the inbox projection has got to.
    pub inbox_cursor: String,
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
    /// The event store answers a round trip.
    #[oai(path = "/health/ready", method = "get", operation_id = "ready")]
    async fn ready(&self) -> HealthResponse {
        match self.state.commands.ping().await {
            Ok(()) => HealthResponse::Ok(Json(self.view("ready", None))),
            Err(e) => {
                HealthResponse::Unavailable(Json(self.view("unavailable", Some(e.to_string()))))
            }
        }
    }
}

impl HealthApi {
    fn view(&self, status: &str, detail: Option<String>) -> HealthView {
        HealthView {
            status: status.to_owned(),
            storage: self.state.storage.to_owned(),
            detail,
            inbox_cursor: self.state.inbox_projector.checkpoint().to_cursor(),
        }
    }
}
