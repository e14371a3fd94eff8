//! `/v1/users/{user}/inbox`: the inbox page with its counts, and read-all.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use tracing::instrument;

use super::context::RequestContext;
use super::notifications::metadata;
use super::params::{
    AsOfRule, CategoryRule, InboxLimitRule, Int, LogCursorRule, ReadStatusRule, TenantRule, Text,
    UserRule,
};
use super::problem::ApiError;
use super::views::{InboxPageView, NotificationView, ReadAllView};
use super::{wait_for, ApiTags};
use crate::domain::contact::TenantId;
use crate::domain::{Category, NotificationCommand};
use crate::projections::inbox::{page_from_history, InboxQuery, ReadFilter};
use crate::storage::Position;
use crate::AppState;

pub use super::params::{INBOX_DEFAULT_LIMIT as DEFAULT_LIMIT, INBOX_MAX_LIMIT as MAX_LIMIT};

#[derive(ApiResponse)]
pub enum InboxResponse {
    #[oai(status = 200)]
    Ok(Json<InboxPageView>),
}

#[derive(ApiResponse)]
pub enum ReadAllResponse {
    #[oai(status = 200)]
    Ok(Json<ReadAllView>),
}

/// `as_of` as (last position included, latest recording time included).
pub fn parse_as_of(raw: &str) -> Result<(Position, chrono::DateTime<chrono::Utc>), ApiError> {
    let far = Position::new(i64::MAX, i64::MAX);
    if let Ok(position) = Position::parse_cursor(raw) {
        return Ok((position, chrono::DateTime::<chrono::Utc>::MAX_UTC));
    }
    match chrono::DateTime::parse_from_rfc3339(raw) {
        Ok(t) => Ok((far, t.with_timezone(&chrono::Utc))),
        Err(_) => Err(ApiError::invalid(
            "query.as_of",
            format!("`{raw}` is neither an RFC 3339 time (2026-11-22T08:00:00Z) nor a cursor"),
        )),
    }
}

pub struct InboxApi {
    pub state: Arc<AppState>,
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Inbox")]
impl InboxApi {
    /// A user's inbox
    ///
    /// In-app notifications, newest first, with the unread and unseen counts
    /// (archived notifications count in neither). Page with `cursor`: pages
    /// stay stable while new notifications arrive.
    #[oai(path = "/users/:user/inbox", method = "get", operation_id = "getInbox")]
    #[allow(clippy::too_many_arguments)]
    async fn inbox(
        &self,
        user: Path<Text<UserRule>>,
        /// `unread` or `read`; absent: both.
        status: Query<Option<Text<ReadStatusRule>>>,
        /// Only this category.
        category: Query<Option<Text<CategoryRule>>>,
        /// Only those sent for this tenant.
        tenant: Query<Option<Text<TenantRule>>>,
        /// `true`: only archived notifications; absent or `false`: the inbox proper.
        archived: Query<Option<bool>>,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<Text<LogCursorRule>>>,
        /// Items per page, 1–100 (default 20).
        limit: Query<Option<Int<InboxLimitRule>>>,
        /// A command's `cursor`: answer only once the inbox includes that command.
        min_position: Query<Option<Text<LogCursorRule>>>,
        /// Time travel: the inbox and its counts as they were at this RFC 3339
        /// time or cursor (read from the event log).
        as_of: Query<Option<Text<AsOfRule>>>,
    ) -> Result<InboxResponse, ApiError> {
        let recipient = super::params::path_user(user.0.as_str())?;
        let status = match status.0.as_ref().map(Text::as_str) {
            None => None,
            Some("unread") => Some(ReadFilter::Unread),
            Some("read") => Some(ReadFilter::Read),
            Some(other) => {
                return Err(ApiError::invalid(
                    "query.status",
                    format!("`{other}` is not a status; use `unread` or `read`"),
                ))
            }
        };
        let category = category
            .0
            .as_ref()
            .map(|c| Category::parse(c.as_str()))
            .transpose()
            .map_err(|e| ApiError::invalid("query.category", e.0))?;
        let tenant = tenant
            .0
            .as_ref()
            .map(|t| TenantId::parse(t.as_str()))
            .transpose()
            .map_err(|e| ApiError::invalid("query.tenant", e.0))?;
        let limit = super::page_limit(limit.0.map(|l| l.0), DEFAULT_LIMIT, MAX_LIMIT)?;
        let before = cursor
            .0
            .as_ref()
            .map(|c| Position::parse_cursor(c.as_str()))
            .transpose()
            .map_err(|e| ApiError::invalid("query.cursor", e.to_string()))?;
        wait_for(
            &self.state,
            &self.state.projections.inbox().projector,
            min_position.0.as_ref().map(Text::as_str),
        )
        .await?;
        let query = InboxQuery {
            recipient,
            status,
            category,
            tenant,
            archived: archived.0.unwrap_or(false),
            before,
            limit,
        };
        let page = match as_of.0.as_ref().map(Text::as_str) {
            None => self.state.inbox.page(&query).await?,
            Some(raw) => {
                let (until, recorded_by) = parse_as_of(raw)?;
                let most = self.state.as_of_max_events;
                let history = self
                    .state
                    .log
                    .recipient_history(query.recipient.as_str(), until, recorded_by, most)
                    .await?;
                if history.len() > most {
                    return Err(ApiError::invalid(
                        "query.as_of",
                        format!(
                            "the inbox of {} up to then holds more than {most} events, \
                             more than one request folds; pick an earlier as_of (or export the log)",
                            query.recipient.as_str()
                        ),
                    ));
                }
                let skipped = self
                    .state
                    .projections
                    .inbox()
                    .registered
                    .parking
                    .skipped()
                    .await?;
                page_from_history(&history, &skipped, &query)
            }
        };
        Ok(InboxResponse::Ok(Json(InboxPageView {
            items: page
                .items
                .iter()
                .filter_map(|row| NotificationView::from_state(&row.state, row.last_position))
                .collect(),
            next_cursor: page.next.map(Position::to_cursor),
            unread_count: page.unread_count,
            unseen_count: page.unseen_count,
        })))
    }

    /// Mark the whole inbox read
    ///
    /// Marks every unread notification in the inbox read (archived ones too):
    /// one recorded command each, decided and appended in batches of 500 (one
    /// read and one append a batch, each notification still checked against
    /// the version it was decided on). Pass the answer's `cursor` as `min_position`
    /// to read the inbox with all of them read.
    #[oai(
        path = "/users/:user/inbox/read-all",
        method = "post",
        operation_id = "readAll"
    )]
    #[instrument(skip_all)]
    async fn read_all(
        &self,
        ctx: Data<&RequestContext>,
        user: Path<Text<UserRule>>,
        /// Wait for the inbox to include this cursor before choosing what to mark.
        min_position: Query<Option<Text<LogCursorRule>>>,
    ) -> Result<ReadAllResponse, ApiError> {
        let recipient = super::params::path_user(user.0.as_str())?;
        wait_for(
            &self.state,
            &self.state.projections.inbox().projector,
            min_position.0.as_ref().map(Text::as_str),
        )
        .await?;
        let ids = self.state.inbox.unread_ids(&recipient).await?;
        let mut meta = metadata(&ctx);
        meta.causation_id = Some(ctx.request_id.clone());
        let done = self
            .state
            .commands
            .execute_many(&ids, |at| NotificationCommand::MarkRead { at }, &meta)
            .await?;
        let marked = done.changed;
        let cursor = self
            .state
            .projections
            .inbox()
            .projector
            .checkpoint()
            .max(done.position);
        Ok(ReadAllResponse::Ok(Json(ReadAllView {
            marked,
            cursor: cursor.to_cursor(),
        })))
    }
}
