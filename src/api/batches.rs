//! Batches: `GET /v1/users/{user}/batches` (open and recent, oldest
//! first, with their items and when each flushes), `GET /v1/batches/{id}`,
//! and `POST /v1/batches/{id}/flush` (close one now, as a digest).

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use tracing::instrument;

use super::context::RequestContext;
use super::notifications::metadata;
use super::params::{
    path_user, BatchCursorRule, BatchIdRule, BatchStatusRule, InboxLimitRule, Int, LogCursorRule,
    Text, UserRule,
};
use super::problem::ApiError;
use super::views::rfc3339;
use super::{page_limit, wait_for, ApiTags};
use crate::commands::CommandError;
use crate::domain::batch::{parse_batch_id, BatchError};
use crate::projections::batches::{self, Row};
use crate::AppState;

/// One batch.
#[derive(Object, Debug)]
#[oai(rename = "Batch")]
pub struct BatchView {
    pub id: String,
    /// The rendered batch key.
    pub key: String,
    pub recipient: String,
    pub category: String,
    /// `open` or `flushed`.
    pub status: String,
    /// Items held for the digest.
    pub count: u64,
    /// RFC 3339 UTC: when it flushes by time (its window or schedule);
    /// once flushed, when it did.
    pub flush_at: String,
    /// The items' notification ids, in the order added.
    pub items: Vec<String>,
    /// The first item, delivered at once (`first_item_immediately`).
    #[oai(nullable)]
    pub released: Option<String>,
    /// The batching policy's version it opened with and keeps.
    pub policy_version: u64,
    pub opened_at: String,
    #[oai(nullable)]
    pub flushed_at: Option<String>,
    /// Why it flushed: `window`, `schedule`, `max_items` or `manual`.
    #[oai(nullable)]
    pub reason: Option<String>,
    /// The digest that carried its items (none below `min_items`: they
    /// were delivered one by one).
    #[oai(nullable)]
    pub digest_id: Option<String>,
}

impl BatchView {
    fn of(row: Row) -> Self {
        Self {
            id: row.id,
            key: row.key,
            recipient: row.recipient.as_str().to_owned(),
            category: row.category,
            status: row.status,
            count: row.count as u64,
            flush_at: rfc3339(row.flush_at),
            items: row.items.iter().map(|i| i.to_string()).collect(),
            released: row.released.map(|i| i.to_string()),
            policy_version: row.policy_version,
            opened_at: rfc3339(row.opened_at),
            flushed_at: row.flushed_at.map(rfc3339),
            reason: row.reason.map(|r| r.as_str().to_owned()),
            digest_id: row.digest_id.map(|i| i.to_string()),
        }
    }
}

#[derive(Object, Debug)]
pub struct BatchPage {
    pub items: Vec<BatchView>,
    /// Pass as `cursor` for the next page; null on the last.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// What a flush request did.
#[derive(Object, Debug)]
pub struct FlushView {
    pub id: String,
    /// False when it had flushed already (nothing was recorded).
    pub changed: bool,
    pub cursor: String,
}

#[derive(ApiResponse)]
pub enum BatchPageResponse {
    #[oai(status = 200)]
    Ok(Json<BatchPage>),
}

#[derive(ApiResponse)]
pub enum BatchResponse {
    #[oai(status = 200)]
    Ok(Json<BatchView>),
}

#[derive(ApiResponse)]
pub enum FlushResponse {
    #[oai(status = 200)]
    Ok(Json<FlushView>),
}

pub struct BatchesApi {
    pub state: Arc<AppState>,
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Inbox")]
impl BatchesApi {
    /// A user's batches
    ///
    /// Open and flushed, oldest first, each with its items and when it
    /// flushes; `status` narrows to one. Read from the `batches` read
    /// model (`min_position` waits for it); the `batches:{user}` stream
    /// topic pushes each change.
    #[oai(
        path = "/users/:user/batches",
        method = "get",
        operation_id = "listUserBatches"
    )]
    async fn list(
        &self,
        user: Path<Text<UserRule>>,
        /// `open` or `flushed`; absent: both.
        status: Query<Option<Text<BatchStatusRule>>>,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<Text<BatchCursorRule>>>,
        /// Batches per page, 1–100 (default 20).
        limit: Query<Option<Int<InboxLimitRule>>>,
        /// A cursor; answer only once the read model has reached it.
        min_position: Query<Option<Text<LogCursorRule>>>,
    ) -> Result<BatchPageResponse, ApiError> {
        let user = path_user(user.0.as_str())?;
        let limit = page_limit(limit.0.map(|l| l.0), 20, 100)?;
        let status = match status.0.as_ref().map(Text::as_str) {
            None => None,
            Some(s @ ("open" | "flushed")) => Some(s.to_owned()),
            Some(other) => {
                return Err(ApiError::invalid(
                    "query.status",
                    format!("`{other}` is not a batch status; use `open` or `flushed`"),
                ))
            }
        };
        let mut after = match &cursor.0 {
            Some(c) => Some(parse_cursor(c.as_str())?),
            None => None,
        };
        self.wait(min_position.0.as_ref()).await?;
        let start = batches::range_of(&user);
        let mut items = Vec::with_capacity(limit);
        // Users whose names hash alike share a range: read past their rows.
        let more = loop {
            let rows = self
                .state
                .batch_rows
                .range(start, start + batches::RANGE, after.clone(), limit + 1)
                .await?;
            let exhausted = rows.len() <= limit;
            for k in rows {
                after = Some((k.sort, k.key.clone()));
                let wanted =
                    k.row.recipient == user && status.as_deref().is_none_or(|s| s == k.row.status);
                if wanted {
                    items.push((k.sort, BatchView::of(k.row)));
                }
            }
            if items.len() > limit {
                break true;
            }
            if exhausted {
                break false;
            }
        };
        items.truncate(limit);
        let next_cursor = more
            .then(|| {
                items
                    .last()
                    .map(|(sort, b)| format!("{:016x}{}", sort, b.id))
            })
            .flatten();
        Ok(BatchPageResponse::Ok(Json(BatchPage {
            items: items.into_iter().map(|(_, b)| b).collect(),
            next_cursor,
        })))
    }

    /// One batch
    #[oai(path = "/batches/:id", method = "get", operation_id = "getBatch")]
    async fn get(
        &self,
        id: Path<Text<BatchIdRule>>,
        /// A cursor; answer only once the read model has reached it.
        min_position: Query<Option<Text<LogCursorRule>>>,
    ) -> Result<BatchResponse, ApiError> {
        let id = id.0.as_str();
        self.wait(min_position.0.as_ref()).await?;
        let row = self
            .state
            .batch_rows
            .get(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no batch {id} exists")))?;
        Ok(BatchResponse::Ok(Json(BatchView::of(row.row))))
    }

    /// Flush a batch now
    ///
    /// Closes the batch as a `manual` flush: its digest (or, below
    /// `min_items`, its items one by one) follows as for any flush, and the
    /// next item opens the next batch. A batch flushed already answers
    /// `changed: false`. Decided on the batch's stream, never on a read
    /// model, so it races no item: an item lands in this batch or the next.
    #[oai(
        path = "/batches/:id/flush",
        method = "post",
        operation_id = "flushBatch"
    )]
    #[instrument(skip_all, fields(batch = %id.0.as_str()))]
    async fn flush(
        &self,
        ctx: Data<&RequestContext>,
        id: Path<Text<BatchIdRule>>,
    ) -> Result<FlushResponse, ApiError> {
        let id = id.0.as_str();
        let missing = || ApiError::not_found(format!("no batch {id} exists"));
        let (stream, number) = parse_batch_id(id).ok_or_else(missing)?;
        match self
            .state
            .batch_commands
            .flush(&stream, number, true, &metadata(&ctx))
            .await
        {
            Ok((flushed, position)) => Ok(FlushResponse::Ok(Json(FlushView {
                id: id.to_owned(),
                changed: flushed.is_some(),
                cursor: position.to_cursor(),
            }))),
            Err(CommandError::Rejected(BatchError::NotFound(_))) => Err(missing()),
            Err(other) => Err(other.into()),
        }
    }
}

impl BatchesApi {
    async fn wait(&self, min_position: Option<&Text<LogCursorRule>>) -> Result<(), ApiError> {
        let projector = &self
            .state
            .projections
            .get(batches::NAME)
            .map_err(|e| ApiError::internal(&e))?
            .projector;
        wait_for(&self.state, projector, min_position.map(Text::as_str)).await
    }
}

/// A page cursor: the last row's sort (16 hex digits) and id.
fn parse_cursor(raw: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::invalid("query.cursor", "not a `next_cursor` tidings issued");
    let (sort, id) = raw.split_at_checked(16).ok_or_else(bad)?;
    let sort = i64::from_str_radix(sort, 16).map_err(|_| bad())?;
    parse_batch_id(id).ok_or_else(bad)?;
    Ok((sort, id.to_owned()))
}
