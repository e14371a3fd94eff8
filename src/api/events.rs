//! The event log over HTTP: a notification's history (audit) and the global
//! log in commit order (export and backfills), as JSON pages or NDJSON.

use std::sync::Arc;

use poem::web::Data;
use poem::Body;
use poem_openapi::param::{Path, Query as OaQuery};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::{Deserialize, Serialize};

use super::context::RequestContext;
use super::params::{EventLimitRule, Int, LogCursorRule, NotificationIdRule, SequenceRule, Text};
use super::problem::ApiError;
use super::views::rfc3339;
use super::ApiTags;
use crate::domain::NotificationId;
use crate::storage::{LoggedEvent, Position};
use crate::AppState;

pub use super::params::{EVENTS_DEFAULT_LIMIT as DEFAULT_LIMIT, EVENTS_MAX_LIMIT as MAX_LIMIT};
/// Events read per statement while scanning for a `type`. A request reads
/// at most `--events-scan-max` events: a type that matches rarely answers a
/// short (even empty) page with `has_more` and the cursor it got to, rather
/// than reading the whole log.
const SCAN_PAGE: usize = 1_000;

/// One event, as the audit, the global log and an NDJSON export line all
/// show it.
#[derive(Object, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[oai(rename = "Event")]
pub struct EventView {
    /// Position in the global log.
    pub cursor: String,
    /// `Notification`, ...
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Position within its own stream, from 1.
    pub sequence: i64,
    /// `NotificationCreated`, `NotificationRead`, ...
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub event_type: String,
    pub version: String,
    /// The event's fields (null when it cannot be read).
    pub data: serde_json::Value,
    /// Who and why: request_id, correlation_id, causation_id, actor, command, ...
    pub metadata: serde_json::Value,
    /// RFC 3339 UTC, when the store recorded it.
    pub recorded_at: String,
    /// Present when the stored event cannot be read (`data` and `metadata`
    /// are then null): why, and what it holds as stored. An import stores
    /// it as it was.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<UnreadableView>,
}

/// A stored event this release cannot read.
#[derive(Object, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UnreadableView {
    /// What does not parse, in the parser's words.
    pub error: String,
    /// The payload as stored (JSON text).
    pub payload: String,
    /// The metadata as stored (JSON text).
    pub metadata: String,
}

/// An event's metadata as its notification's recipient sees it: which
/// command, when asked, and whether the user or the service asked. Which
/// key sent it, on whose behalf, with which idempotency key and request ids
/// are the service's own business.
fn for_the_user(metadata: &serde_json::Value, user: &str) -> serde_json::Value {
    let actor = metadata[crate::commands::metadata::ACTOR].as_str();
    let asked_by = if actor == Some(&format!("user:{user}")) {
        actor.unwrap_or_default().to_owned()
    } else {
        "service".to_owned()
    };
    serde_json::json!({
        "command": metadata[crate::commands::metadata::COMMAND],
        "actor": asked_by,
    })
}

impl From<&LoggedEvent> for EventView {
    fn from(e: &LoggedEvent) -> Self {
        // Every backend shows the current shape (PostgreSQL's reader upcast
        // already; the memory store keeps what was appended).
        let mut version = e.event_version.clone();
        let current = crate::storage::upcast::upcast(&e.event_type, &version, &e.payload);
        if current.is_some() {
            version = crate::domain::EVENT_VERSION.to_owned();
        }
        let payload = current.as_ref().unwrap_or(&e.payload);
        // Stored payloads name their event: {"NotificationRead": {...}}. One
        // that does not is not an event this release can read.
        let unwrapped = match (&e.unreadable, payload.as_object()) {
            (None, Some(map)) if map.len() == 1 => map.get(&e.event_type).cloned(),
            _ => None,
        };
        let unreadable = match (&e.unreadable, &unwrapped) {
            (Some(u), _) => Some(UnreadableView {
                error: u.error.clone(),
                payload: u.payload.clone(),
                metadata: u.metadata.clone(),
            }),
            (None, None) => Some(UnreadableView {
                error: format!(
                    "the payload is not {{\"{}\": ...}}, the shape of its event type",
                    e.event_type
                ),
                payload: e.payload.to_string(),
                metadata: e.metadata.to_string(),
            }),
            (None, Some(_)) => None,
        };
        Self {
            cursor: e.position.to_cursor(),
            aggregate_type: e.aggregate_type.clone(),
            aggregate_id: e.aggregate_id.clone(),
            sequence: e.sequence,
            event_type: e.event_type.clone(),
            version,
            data: unwrapped.unwrap_or(serde_json::Value::Null),
            metadata: if unreadable.is_some() {
                serde_json::Value::Null
            } else {
                (*e.metadata).clone()
            },
            recorded_at: rfc3339(e.recorded_at),
            unreadable,
        }
    }
}

impl EventView {
    /// The payload and metadata to store for this event, as JSON text: the
    /// text as stored for one exported as unreadable, else the data in the
    /// shape of its type.
    pub fn stored(&self) -> (String, String) {
        match &self.unreadable {
            Some(raw) => (raw.payload.clone(), raw.metadata.clone()),
            None => (
                serde_json::json!({ self.event_type.clone(): self.data }).to_string(),
                self.metadata.to_string(),
            ),
        }
    }
}

#[derive(Object, Debug, Clone, PartialEq)]
pub struct AuditPage {
    pub events: Vec<EventView>,
    /// Pass as `after` for the next page; null on the last page.
    #[oai(nullable)]
    pub next_after: Option<i64>,
}

#[derive(Object, Debug, Clone, PartialEq)]
pub struct LogPage {
    pub events: Vec<EventView>,
    /// Where the next page starts (pass as `after`); also where to poll from
    /// when `has_more` is false.
    pub next_cursor: String,
    /// More events were committed after this page when it was read.
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum AuditResponse {
    #[oai(status = 200)]
    Ok(Json<AuditPage>),
}

#[derive(ApiResponse)]
pub enum LogResponse {
    #[oai(status = 200)]
    Ok(Json<LogPage>),
}

#[derive(ApiResponse)]
pub enum ExportResponse {
    /// One event a line (an `Event` as JSON), in commit order, streamed.
    #[oai(status = 200, content_type = "application/x-ndjson")]
    Ok(Binary<Body>),
}

fn parse_after(after: Option<&str>) -> Result<Position, ApiError> {
    after
        .map(Position::parse_cursor)
        .transpose()
        .map(Option::unwrap_or_default)
        .map_err(|e| ApiError::invalid("query.after", e.to_string()))
}

pub struct EventsApi {
    pub state: Arc<AppState>,
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Events")]
impl EventsApi {
    /// A notification's history (audit)
    ///
    /// Every event of the notification in order, with who asked and why
    /// (metadata). Deleted notifications keep their history.
    #[oai(
        path = "/notifications/:id/events",
        method = "get",
        operation_id = "notificationEvents"
    )]
    async fn audit(
        &self,
        ctx: Data<&RequestContext>,
        id: Path<Text<NotificationIdRule>>,
        /// The `next_after` of the previous page (a sequence number).
        after: OaQuery<Option<Int<SequenceRule>>>,
        /// Events per page, 1–1000 (default 100).
        limit: OaQuery<Option<Int<EventLimitRule>>>,
    ) -> Result<AuditResponse, ApiError> {
        let id = NotificationId::parse(id.0.as_str())
            .map_err(|e| ApiError::malformed("path.id", e.0))?;
        let limit = super::page_limit(limit.0.map(|l| l.0), DEFAULT_LIMIT, MAX_LIMIT)?;
        let after = after.0.map_or(0, |a| a.0);
        if after < 0 {
            return Err(ApiError::invalid("query.after", "must be 0 or more"));
        }
        let events = self
            .state
            .log
            .stream("Notification", &id.to_string(), after, limit + 1)
            .await?;
        if (events.is_empty() && after == 0)
            || !super::notifications::may_see(&self.state, &ctx.principal, id, None).await?
        {
            return Err(ApiError::not_found(format!("no notification {id} exists")));
        }
        let more = events.len() > limit;
        let mut events: Vec<EventView> = events
            .iter()
            .take(limit)
            .map(|e| EventView::from(&**e))
            .collect();
        if let Some(token) = ctx.principal.user() {
            for event in &mut events {
                event.metadata = for_the_user(&event.metadata, token.user.as_str());
            }
        }
        let next_after = more.then(|| events.last().map_or(after, |e| e.sequence));
        Ok(AuditResponse::Ok(Json(AuditPage { events, next_after })))
    }

    /// The global event log
    ///
    /// Committed events in commit order after `after` (a cursor), optionally
    /// of one `type`. One request reads at most `--events-scan-max` (10,000) events: with a `type`
    /// that matches rarely a page can hold fewer than `limit` events (even
    /// none) with `has_more` true; continue from `next_cursor`. For large
    /// exports use `GET /v1/events/export` (NDJSON, streamed) or `tidings
    /// events export`.
    #[oai(path = "/events", method = "get", operation_id = "events")]
    async fn log(
        &self,
        /// A cursor: the `next_cursor` of the previous page, or any event's cursor.
        after: OaQuery<Option<Text<LogCursorRule>>>,
        /// Events per page, 1–1000 (default 100).
        limit: OaQuery<Option<Int<EventLimitRule>>>,
        /// Only events of this type (`NotificationRead`, ...).
        #[oai(name = "type")]
        event_type: OaQuery<Option<String>>,
    ) -> Result<LogResponse, ApiError> {
        let limit = super::page_limit(limit.0.map(|l| l.0), DEFAULT_LIMIT, MAX_LIMIT)?;
        let mut cursor = parse_after(after.0.as_ref().map(Text::as_str))?;
        let mut events = Vec::new();
        let mut scanned = 0;
        let max_scan = self.state.events_scan_max;
        let has_more = loop {
            let want = match event_type.0 {
                Some(_) => SCAN_PAGE.min(max_scan - scanned),
                None => limit,
            };
            let page = self.state.log.read_after(cursor, want).await?;
            let full = page.len() == want;
            let mut used = 0;
            for e in &page {
                cursor = e.position;
                scanned += 1;
                used += 1;
                if event_type.0.as_deref().is_none_or(|t| t == e.event_type) {
                    events.push(EventView::from(&**e));
                    if events.len() == limit {
                        break;
                    }
                }
            }
            if events.len() == limit {
                break used < page.len() || full;
            }
            if !full {
                break false;
            }
            if scanned >= max_scan {
                break true;
            }
        };
        Ok(LogResponse::Ok(Json(LogPage {
            events,
            next_cursor: cursor.to_cursor(),
            has_more,
        })))
    }

    /// Export the global log (NDJSON)
    ///
    /// Every committed event after `after` (a cursor), optionally of one
    /// `type`, one JSON object a line in commit order, streamed page by page
    /// as it is read: the same lines `tidings events export` writes and
    /// `tidings events import` reads.
    #[oai(path = "/events/export", method = "get", operation_id = "exportEvents")]
    async fn export(
        &self,
        /// A cursor: start after this event.
        after: OaQuery<Option<Text<LogCursorRule>>>,
        /// Only events of this type (`NotificationRead`, ...).
        #[oai(name = "type")]
        event_type: OaQuery<Option<String>>,
    ) -> Result<ExportResponse, ApiError> {
        let start = parse_after(after.0.as_ref().map(Text::as_str))?;
        Ok(ExportResponse::Ok(Binary(export_body(
            &self.state,
            start,
            event_type.0,
        ))))
    }
}

/// Every event after `after` up to the newest, one JSON object per line,
/// read and sent page by page.
fn export_body(state: &AppState, start: Position, event_type: Option<String>) -> Body {
    let log = state.log.clone();
    let pages = futures_util::stream::unfold(Some(start), move |cursor| {
        let log = log.clone();
        let event_type = event_type.clone();
        async move {
            let cursor = cursor?;
            match log.read_after(cursor, 1000).await {
                Ok(page) if page.is_empty() => None,
                Ok(page) => {
                    let next = page.last().map(|e| e.position);
                    let mut lines = Vec::new();
                    for e in page
                        .iter()
                        .filter(|e| event_type.as_deref().is_none_or(|t| t == e.event_type))
                    {
                        if serde_json::to_writer(&mut lines, &EventView::from(&**e)).is_ok() {
                            lines.push(b'\n');
                        }
                    }
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from(lines)), next))
                }
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
            }
        }
    });
    Body::from_bytes_stream(pages)
}
