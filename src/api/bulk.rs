//! `POST /v1/users/{user}/inbox/bulk`: one action (seen, read, archive,
//! delete) on every inbox notification a filter names (category, status,
//! created before a time, tenant), in bounded appends, with one `counts`
//! stream update for the whole operation.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;
use tracing::instrument;

use super::context::RequestContext;
use super::json::{object, StrictJson};
use super::notifications::metadata;
use super::params::{
    BulkActionRule, CategoryRule, ReadStatusRule, TenantRule, Text, TimeRule, UserRule,
};
use super::problem::{ApiError, FieldProblem};
use super::ApiTags;
use crate::commands::metadata::BULK_MORE;
use crate::commands::BATCH;
use crate::domain::bulk::{BulkAction, BulkCommand};
use crate::domain::contact::TenantId;
use crate::domain::{Category, NotificationId, UserId};
use crate::projections::inbox::{InboxRow, ReadFilter, Selection};
use crate::AppState;

/// The most notifications one bulk operation acts on.
pub const BULK_MAX: usize = 10_000;

/// Which notifications: all of the conditions given.
#[derive(Object, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
#[oai(rename = "BulkFilter")]
pub struct BulkFilter {
    #[serde(default)]
    #[oai(nullable)]
    pub category: Option<Text<CategoryRule>>,
    /// `unread` or `read`.
    #[serde(default)]
    #[oai(nullable)]
    pub status: Option<Text<ReadStatusRule>>,
    /// Created before this time (RFC 3339).
    #[serde(default)]
    #[oai(nullable)]
    pub before: Option<Text<TimeRule>>,
    #[serde(default)]
    #[oai(nullable)]
    pub tenant: Option<Text<TenantRule>>,
}

#[derive(Object, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    /// `seen`, `read`, `archive` or `delete`.
    pub action: Text<BulkActionRule>,
    /// Absent: every notification in the inbox (archived ones too).
    #[serde(default, deserialize_with = "object::optional")]
    #[oai(nullable)]
    pub filter: Option<BulkFilter>,
}

#[derive(Object, Debug)]
pub struct BulkView {
    /// Notifications the filter names.
    pub matched: u64,
    /// Those the action changed (the others already were so).
    pub changed: u64,
    /// Pass as `min_position` to read the inbox after the operation.
    pub cursor: String,
}

#[derive(ApiResponse)]
pub enum BulkResponse {
    #[oai(status = 200)]
    Ok(Json<BulkView>),
}

fn parse_action(s: &str) -> Result<BulkAction, ApiError> {
    BulkAction::parse(s).ok_or_else(|| {
        ApiError::invalid(
            "action",
            format!("`{s}` is not an action; use seen, read, archive or delete"),
        )
    })
}

/// Whether `action` would change `row` (the others are already so).
fn changes(action: BulkAction, row: &InboxRow) -> bool {
    match action {
        BulkAction::Seen => !row.state.is_seen(),
        BulkAction::Read => !row.state.is_read(),
        BulkAction::Archive => !row.state.is_archived(),
        BulkAction::Delete => true,
    }
}

fn selection(user: UserId, filter: Option<&BulkFilter>) -> Result<Selection, ApiError> {
    let mut errors = Vec::new();
    let mut check = |field: &str, r: Result<(), String>| {
        if let Err(message) = r {
            errors.push(FieldProblem {
                field: format!("filter.{field}"),
                message,
            })
        }
    };
    let none = BulkFilter::default();
    let f = filter.unwrap_or(&none);
    let mut s = Selection {
        recipient: user,
        status: None,
        category: None,
        tenant: None,
        created_before: None,
        limit: BULK_MAX,
    };
    if let Some(c) = &f.category {
        check(
            "category",
            Category::parse(c.as_str())
                .map(|c| s.category = Some(c))
                .map_err(|e| e.0),
        );
    }
    if let Some(st) = &f.status {
        let status = match st.as_str() {
            "unread" => Ok(ReadFilter::Unread),
            "read" => Ok(ReadFilter::Read),
            other => Err(format!("`{other}` is not a status; use unread or read")),
        };
        check("status", status.map(|st| s.status = Some(st)));
    }
    if let Some(t) = &f.tenant {
        check(
            "tenant",
            TenantId::parse(t.as_str())
                .map(|t| s.tenant = Some(t))
                .map_err(|e| e.0),
        );
    }
    if let Some(b) = &f.before {
        check(
            "before",
            DateTime::parse_from_rfc3339(b.as_str())
                .map(|t| s.created_before = Some(t.with_timezone(&Utc)))
                .map_err(|_| format!("`{b}` is not an RFC 3339 time (2026-12-01T00:00:00Z)")),
        );
    }
    if errors.is_empty() {
        Ok(s)
    } else {
        Err(ApiError::invalid_fields(errors))
    }
}

pub struct BulkApi {
    pub state: Arc<AppState>,
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Inbox")]
impl BulkApi {
    /// Act on many inbox notifications at once
    ///
    /// `seen`, `read`, `archive` or `delete` every notification of the
    /// user's inbox (archived ones too) the filter names, up to 10,000 (more
    /// is refused: narrow the filter, `before` say). Recorded in appends of
    /// 500; `inbox:{user}` subscribers get each changed row and one
    /// `counts` update for the whole operation. `matched` and `changed` are
    /// exact for the inbox as of the request.
    #[oai(
        path = "/users/:user/inbox/bulk",
        method = "post",
        operation_id = "bulkInbox"
    )]
    #[instrument(skip_all)]
    async fn bulk(
        &self,
        ctx: Data<&RequestContext>,
        user: Path<Text<UserRule>>,
        body: StrictJson<BulkRequest>,
    ) -> Result<BulkResponse, ApiError> {
        let user = super::params::path_user(user.0.as_str())?;
        let action = parse_action(body.0.action.as_str());
        let selection = selection(user, body.0.filter.as_ref());
        let (action, selection) = (action?, selection?);
        let rows = self.state.inbox.select(&selection).await?;
        if rows.len() > BULK_MAX {
            return Err(ApiError::invalid(
                "filter",
                format!(
                    "names more than {BULK_MAX} notifications; narrow it (`before`, `category`) and repeat"
                ),
            ));
        }
        let ids: Vec<NotificationId> = rows
            .iter()
            .filter(|r| changes(action, r))
            .filter_map(|r| r.state.id)
            .collect();
        let mut meta = metadata(&ctx);
        meta.causation_id = Some(ctx.request_id.clone());
        // On a task of its own: a client that goes away mid-operation does
        // not leave it half done, with its counts never announced.
        let state = self.state.clone();
        let user = selection.recipient.clone();
        let matched = rows.len() as u64;
        let run = tokio::spawn(async move {
            let mut changed = 0;
            let mut position = state.projections.inbox().projector.checkpoint();
            meta.bulk = Some(BULK_MORE);
            for batch in ids.chunks(BATCH) {
                let done = state
                    .commands
                    .execute_many(batch, |at| action.command(at), &meta)
                    .await?;
                changed += done.changed;
                position = position.max(done.position);
            }
            // The operation's end, with its counts announced once, however
            // much its last batch changed (recorded even when it changed
            // nothing: a retry after a failure announces what the first
            // try changed).
            if matched > 0 {
                meta.bulk = None;
                let id = uuid::Uuid::now_v7().to_string();
                let record = |at| BulkCommand::Record {
                    user: user.clone(),
                    action,
                    matched,
                    changed,
                    at,
                };
                let done = state
                    .bulks
                    .execute(&id, record, &meta, true)
                    .await
                    .map_err(|e| e.unless_rejected().unwrap_or_else(|never| match never {}))?;
                position = position.max(done.position);
            }
            Ok::<_, crate::commands::CommandError>((changed, position))
        });
        let (changed, position) = run.await.map_err(|e| ApiError::internal(&e))??;
        Ok(BulkResponse::Ok(Json(BulkView {
            matched: rows.len() as u64,
            changed,
            cursor: position.to_cursor(),
        })))
    }
}
