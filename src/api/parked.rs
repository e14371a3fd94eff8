//! `/v1/projections/{name}/parked`: poison events a projection parked, and
//! re-driving or skipping them.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use tracing::{info, instrument};

use super::context::RequestContext;
use super::params::{EventLimitRule, Int, LogCursorRule, ProjectionRule, Text};
use super::problem::ApiError;
use super::views::rfc3339;
use super::ApiTags;
use crate::projections::parked::{ParkedEvent, Parking, ParkingError, RedriveReport};
use crate::storage::Position;
use crate::AppState;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1_000;

/// An event the projection could not apply.
#[derive(Object, Debug, Clone, PartialEq)]
pub struct ParkedEventView {
    /// The event's position in the global log (as in `GET /v1/events`);
    /// pass it to `skip`.
    pub cursor: String,
    pub aggregate_type: String,
    /// The notification id, for notification events.
    pub aggregate_id: String,
    /// The event's position within its notification (as in its audit history).
    pub sequence: i64,
    pub event_type: String,
    /// Why the projection refused it; for a held event, which event it waits behind.
    pub error: String,
    /// How often applying it was tried (0 for a held event).
    pub attempts: u32,
    /// The parked event of the same notification this one waits behind
    /// (its `cursor`); null when this event failed itself.
    #[oai(nullable)]
    pub held_behind: Option<String>,
    pub parked_at: String,
    pub last_attempt_at: String,
}

impl From<&ParkedEvent> for ParkedEventView {
    fn from(p: &ParkedEvent) -> Self {
        Self {
            cursor: p.position.to_cursor(),
            aggregate_type: p.aggregate_type.clone(),
            aggregate_id: p.aggregate_id.clone(),
            sequence: p.sequence,
            event_type: p.event_type.clone(),
            error: p.error.clone(),
            attempts: p.attempts,
            held_behind: p.held_behind.map(Position::to_cursor),
            parked_at: rfc3339(p.parked_at),
            last_attempt_at: rfc3339(p.last_attempt_at),
        }
    }
}

#[derive(Object, Debug, Clone, PartialEq)]
pub struct ParkedPageView {
    pub items: Vec<ParkedEventView>,
    /// Pass as `after` for the next page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
    /// Parked events in all.
    pub total: u64,
}

/// What a re-drive or skip did.
#[derive(Object, Debug, Clone, PartialEq)]
pub struct RedriveView {
    /// Parked events now applied.
    pub applied: u64,
    /// Parked events left: refused again, or waiting behind one that was.
    pub still_parked: u64,
}

impl From<RedriveReport> for RedriveView {
    fn from(r: RedriveReport) -> Self {
        Self {
            applied: r.applied,
            still_parked: r.still_parked,
        }
    }
}

#[derive(ApiResponse)]
pub enum ParkedResponse {
    #[oai(status = 200)]
    Ok(Json<ParkedPageView>),
}

#[derive(ApiResponse)]
pub enum RedriveResponse {
    #[oai(status = 200)]
    Ok(Json<RedriveView>),
}

impl From<ParkingError> for ApiError {
    fn from(err: ParkingError) -> Self {
        match err {
            ParkingError::NotParked(_) => ApiError::not_found(format!(
                "{err}; list them with GET /v1/projections/{{name}}/parked"
            )),
            ParkingError::Busy(_) => ApiError::conflict(
                "maintenance-running",
                "A rebuild is running",
                err.to_string(),
            ),
            ParkingError::Projection(e) => e.into(),
        }
    }
}

pub struct ParkedApi {
    pub state: Arc<AppState>,
}

impl ParkedApi {
    fn parking(&self, name: &str) -> Result<&Arc<dyn Parking>, ApiError> {
        self.state
            .projections
            .get(name)
            .map(|r| &r.registered.parking)
            .map_err(|e| ApiError::not_found(e.to_string()))
    }
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Operations")]
impl ParkedApi {
    /// Parked events
    ///
    /// Events the projection could not apply, in log order: each with the
    /// error, the attempts, and (for events held back behind an earlier
    /// failure of the same notification) the event it waits behind.
    #[oai(
        path = "/projections/:name/parked",
        method = "get",
        operation_id = "parkedEvents"
    )]
    async fn list(
        &self,
        name: Path<Text<ProjectionRule>>,
        /// The `next_cursor` of the previous page.
        after: Query<Option<Text<LogCursorRule>>>,
        /// Items per page, 1–1000 (default 100).
        limit: Query<Option<Int<EventLimitRule>>>,
    ) -> Result<ParkedResponse, ApiError> {
        let parking = self.parking(name.0.as_str())?;
        let limit = super::page_limit(limit.0.map(|l| l.0), DEFAULT_LIMIT, MAX_LIMIT)?;
        let after = after
            .0
            .as_ref()
            .map(Text::as_str)
            .map(Position::parse_cursor)
            .transpose()
            .map_err(|e| ApiError::invalid("query.after", e.to_string()))?
            .unwrap_or(Position::START);
        let mut items = parking.parked(after, limit + 1).await?;
        let more = items.len() > limit;
        items.truncate(limit);
        let next_cursor = more
            .then(|| items.last().map(|p| p.position.to_cursor()))
            .flatten();
        Ok(ParkedResponse::Ok(Json(ParkedPageView {
            items: items.iter().map(ParkedEventView::from).collect(),
            next_cursor,
            total: parking.parked_count().await?,
        })))
    }

    /// Re-drive parked events
    ///
    /// Tries every parked event again (read from the log anew, so a fix
    /// deployed since applies), each notification's in order. What applies
    /// leaves the list and reaches stream subscribers; what is refused again
    /// stays, with one more attempt counted. 409 while a rebuild runs.
    #[oai(
        path = "/projections/:name/parked/redrive",
        method = "post",
        operation_id = "redriveParked"
    )]
    #[instrument(skip_all)]
    async fn redrive(&self, name: Path<Text<ProjectionRule>>) -> Result<RedriveResponse, ApiError> {
        let report = self
            .parking(name.0.as_str())?
            .redrive(&*self.state.log)
            .await?;
        info!(
            projection = %name.0.as_str(),
            applied = report.applied,
            still_parked = report.still_parked,
            "parked events re-driven"
        );
        Ok(RedriveResponse::Ok(Json(report.into())))
    }

    /// Skip a parked event
    ///
    /// Gives up on one parked event for good: it is recorded as skipped (a
    /// rebuild passes it over too), and the parked events of the same
    /// notification are re-driven at once. Use it for an event no release
    /// will ever apply. 404 when nothing is parked at that cursor; 409 while
    /// a rebuild runs.
    #[oai(
        path = "/projections/:name/parked/:cursor/skip",
        method = "post",
        operation_id = "skipParked"
    )]
    #[instrument(skip_all)]
    async fn skip(
        &self,
        ctx: Data<&RequestContext>,
        name: Path<Text<ProjectionRule>>,
        /// The parked event's `cursor`.
        cursor: Path<Text<LogCursorRule>>,
    ) -> Result<RedriveResponse, ApiError> {
        let parking = self.parking(name.0.as_str())?;
        let position = Position::parse_cursor(cursor.0.as_str())
            .map_err(|e| ApiError::invalid("path.cursor", e.to_string()))?;
        let by = format!("{} (request {})", ctx.principal.actor(), ctx.request_id);
        let report = parking.skip(&*self.state.log, position, &by).await?;
        Ok(RedriveResponse::Ok(Json(report.into())))
    }
}
