//! Topics and sends to many: `PUT|DELETE /v1/topics/{topic}/subscribers/{user}`,
//! `GET /v1/topics/{topic}/subscribers` (paged), and `GET /v1/sends/{id}`
//! (how far a send to `recipients` or a `topic` has got).

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use tracing::instrument;

use super::context::RequestContext;
use super::notifications::metadata;
use super::params::{InboxLimitRule, Int, LogCursorRule, Text, TopicRule, UserRule};
use super::problem::ApiError;
use super::views::rfc3339;
use super::{page_limit, wait_for, ApiTags};
use crate::access::Principal;
use crate::commands::metadata::ACTOR;
use crate::domain::topic::{membership_id, MembershipCommand, MembershipError, TopicName};
use crate::domain::{Scope, UserId};
use crate::projections::{sends, topics};
use crate::AppState;

/// A membership after a subscribe or an unsubscribe.
#[derive(Object, Debug)]
pub struct MembershipView {
    pub topic: String,
    pub user: String,
    pub subscribed: bool,
    /// False when it already was so (nothing was recorded).
    pub changed: bool,
    pub cursor: String,
}

#[derive(Object, Debug)]
pub struct Subscriber {
    pub user: String,
    /// RFC 3339 UTC.
    pub since: String,
}

#[derive(Object, Debug)]
pub struct SubscriberPage {
    pub items: Vec<Subscriber>,
    /// Pass as `cursor` for the next page; null on the last.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
    /// Subscribers in all.
    pub total: u64,
}

/// How far a send to many has got.
#[derive(Object, Debug)]
pub struct SendView {
    pub id: String,
    /// Recipients it is expected to reach (the list's length, or the
    /// topic's subscribers when it was accepted); when done, those it did.
    pub total: u64,
    /// Recipients whose notification was created with a channel to go on.
    pub created: u64,
    /// Recipients whose every channel was suppressed (each notification is
    /// still recorded; its `explain` says why).
    pub suppressed: u64,
    /// Recipients passed over because their preferences could not be read
    /// (an event this release cannot read; logged, see the poison-event
    /// runbook).
    pub skipped: u64,
    /// `fanning_out` or `done`.
    pub status: String,
    #[oai(nullable)]
    pub topic: Option<String>,
    /// Pages fanned out so far.
    pub pages: u64,
    pub requested_at: String,
    #[oai(nullable)]
    pub done_at: Option<String>,
}

#[derive(ApiResponse)]
pub enum MembershipResponse {
    #[oai(status = 200)]
    Ok(Json<MembershipView>),
}

#[derive(ApiResponse)]
pub enum SubscribersResponse {
    #[oai(status = 200)]
    Ok(Json<SubscriberPage>),
}

#[derive(ApiResponse)]
pub enum SendResponse {
    #[oai(status = 200)]
    Ok(Json<SendView>),
}

impl From<MembershipError> for ApiError {
    fn from(err: MembershipError) -> Self {
        match err {}
    }
}

fn parse_topic(raw: &str) -> Result<TopicName, ApiError> {
    TopicName::parse(raw).map_err(|e| ApiError::invalid("path.topic", e.0))
}

pub struct TopicsApi {
    pub state: Arc<AppState>,
}

impl TopicsApi {
    async fn membership(
        &self,
        ctx: &RequestContext,
        topic: &str,
        user: &str,
        subscribe: bool,
    ) -> Result<MembershipResponse, ApiError> {
        let topic = parse_topic(topic)?;
        let user = super::params::path_user(user)?;
        let decided = self
            .state
            .memberships
            .execute(
                &membership_id(&topic, &user),
                |at| {
                    let (topic, user) = (topic.clone(), user.clone());
                    if subscribe {
                        MembershipCommand::Subscribe { topic, user, at }
                    } else {
                        MembershipCommand::Unsubscribe { topic, user, at }
                    }
                },
                &metadata(ctx),
                false,
            )
            .await?;
        Ok(MembershipResponse::Ok(Json(MembershipView {
            topic: topic.to_string(),
            user: user.as_str().to_owned(),
            subscribed: decided.state.subscribed,
            changed: decided.changed,
            cursor: decided.position.to_cursor(),
        })))
    }
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Recipients")]
impl TopicsApi {
    /// Subscribe a user to a topic
    ///
    /// A send to the topic reaches every subscriber. Subscribing a
    /// subscriber records nothing (`changed: false`).
    #[oai(
        path = "/topics/:topic/subscribers/:user",
        method = "put",
        operation_id = "subscribe"
    )]
    #[instrument(skip_all)]
    async fn subscribe(
        &self,
        ctx: Data<&RequestContext>,
        topic: Path<Text<TopicRule>>,
        user: Path<Text<UserRule>>,
    ) -> Result<MembershipResponse, ApiError> {
        self.membership(&ctx, topic.0.as_str(), user.0.as_str(), true)
            .await
    }

    /// Unsubscribe a user from a topic
    #[oai(
        path = "/topics/:topic/subscribers/:user",
        method = "delete",
        operation_id = "unsubscribe"
    )]
    #[instrument(skip_all)]
    async fn unsubscribe(
        &self,
        ctx: Data<&RequestContext>,
        topic: Path<Text<TopicRule>>,
        user: Path<Text<UserRule>>,
    ) -> Result<MembershipResponse, ApiError> {
        self.membership(&ctx, topic.0.as_str(), user.0.as_str(), false)
            .await
    }

    /// A topic's subscribers
    ///
    /// By user id, a page at a time.
    #[oai(
        path = "/topics/:topic/subscribers",
        method = "get",
        operation_id = "listSubscribers"
    )]
    async fn subscribers(
        &self,
        topic: Path<Text<TopicRule>>,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<Text<UserRule>>>,
        /// Subscribers per page, 1–100 (default 20).
        limit: Query<Option<Int<InboxLimitRule>>>,
        /// A cursor; answer only once the read model has reached it.
        min_position: Query<Option<Text<LogCursorRule>>>,
    ) -> Result<SubscribersResponse, ApiError> {
        let topic = parse_topic(topic.0.as_str())?;
        let limit = page_limit(limit.0.map(|l| l.0), 20, 100)?;
        let after = match &cursor.0 {
            Some(c) => Some(
                UserId::parse(c.as_str()).map_err(|e| ApiError::invalid("query.cursor", e.0))?,
            ),
            None => None,
        };
        let projector = &self
            .state
            .projections
            .get(topics::NAME)
            .map_err(|e| ApiError::internal(&e))?
            .projector;
        wait_for(
            &self.state,
            projector,
            min_position.0.as_ref().map(Text::as_str),
        )
        .await?;
        let sort = topics::sort_of(&topic);
        let prefix = format!("{}/", topic.as_str());
        let mut items = Vec::with_capacity(limit);
        let mut from = after.map(|u| (sort, membership_id(&topic, &u)));
        // Another topic hashing alike shares the range: read on past its rows.
        let more = loop {
            let rows = self
                .state
                .topics
                .range(sort, sort + 1, from.clone(), limit + 1)
                .await?;
            let exhausted = rows.len() <= limit;
            for k in &rows {
                from = Some((k.sort, k.key.clone()));
                if let (true, topics::Row::Member { user, since }) =
                    (k.key.starts_with(&prefix), &k.row)
                {
                    items.push(Subscriber {
                        user: user.as_str().to_owned(),
                        since: rfc3339(*since),
                    });
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
        let total = match self.state.topics.get(&topics::count_key(&topic)).await? {
            Some(k) => match k.row {
                topics::Row::Count { subscribers } => subscribers,
                topics::Row::Member { .. } => 0,
            },
            None => 0,
        };
        let next_cursor = more.then(|| items.last().map(|s| s.user.clone())).flatten();
        Ok(SubscribersResponse::Ok(Json(SubscriberPage {
            items,
            next_cursor,
            total,
        })))
    }

    /// How far a send to many has got
    ///
    /// A send to `recipients` or a `topic` fans out a page at a time:
    /// `status` is `fanning_out` until every recipient has a notification,
    /// then `done`.
    #[oai(path = "/sends/:id", method = "get", operation_id = "getSend")]
    async fn send(
        &self,
        ctx: Data<&RequestContext>,
        /// The `send_id` of the create.
        id: Path<String>,
        /// A cursor; answer only once the read model has reached it.
        min_position: Query<Option<Text<LogCursorRule>>>,
    ) -> Result<SendResponse, ApiError> {
        let id = id.0;
        let missing = || ApiError::not_found(format!("no send {id} exists"));
        if uuid::Uuid::parse_str(&id).is_err() {
            return Err(missing());
        }
        let projector = &self
            .state
            .projections
            .get(sends::NAME)
            .map_err(|e| ApiError::internal(&e))?
            .projector;
        wait_for(
            &self.state,
            projector,
            min_position.0.as_ref().map(Text::as_str),
        )
        .await?;
        let row = self
            .state
            .send_rows
            .get(&id)
            .await?
            .ok_or_else(missing)?
            .row;
        // A send key sees the sends it made; a read key all of them.
        if let Principal::Key(key) = &ctx.principal {
            if !key.has(Scope::Read) {
                let first = self.state.log.stream("Send", &id, 0, 1).await?;
                let origin = first.first().and_then(|e| e.metadata[ACTOR].as_str());
                if origin != Some(ctx.principal.actor().as_str()) {
                    return Err(missing());
                }
            }
        }
        Ok(SendResponse::Ok(Json(SendView {
            id: id.clone(),
            total: row.total,
            created: row.created,
            suppressed: row.suppressed,
            skipped: row.skipped,
            status: if row.done { "done" } else { "fanning_out" }.to_owned(),
            topic: row.topic,
            pages: row.pages,
            requested_at: rfc3339(row.requested_at),
            done_at: row.done_at.map(rfc3339),
        })))
    }
}
