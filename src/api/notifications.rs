//! `/v1/notifications`: create, read, and every lifecycle command.

use super::create::TemplateAsk;
use crate::commands::experiments::{Enrollment, SendProblem};
use crate::domain::experiment::{Arm, ExperimentId};
use crate::domain::Category;
use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;
use tracing::instrument;

use super::context::RequestContext;
use super::create::{
    id_for_idempotency_key, parse_idempotency_key, Addressee, CreateNotificationRequest,
};
use super::json::StrictJson;
use super::params::{
    ChannelRule, FailureReasonRule, IdempotencyKeyRule, LogCursorRule, NotificationIdRule, Text,
};
use super::problem::ApiError;
use super::views::{CreatedView, NotificationView, ReceiptView};
use super::{wait_for, ApiTags};
use crate::access::Principal;
use crate::commands::{CommandError, CommandMetadata, Created, Receipt};
use crate::domain::send::{SendCommand, SendContent, SendError, SendTarget};
use crate::domain::{
    Channel, FailureReason, Notification, NotificationCommand, NotificationError,
    NotificationEvent, NotificationId, Scope, Timestamp, UserId,
};
use crate::projections::store::Keyed;
use crate::projections::topics;
use crate::AppState;
use cqrs_es::Aggregate;

#[derive(ApiResponse)]
pub enum CreateResponse {
    /// Created (or, for a repeated Idempotency-Key with the same body, the first create's answer).
    #[oai(status = 201)]
    Created(
        Json<CreatedView>,
        /// Where the notification can be read.
        #[oai(header = "Location")]
        String,
        /// `true` when this answer repeats an earlier create with the same Idempotency-Key.
        #[oai(header = "Idempotent-Replayed")]
        Option<bool>,
    ),
    /// A send to `recipients` or a `topic`: recorded; its notifications
    /// are being created, a page at a time (`GET /v1/sends/{id}`).
    #[oai(status = 202)]
    Accepted(
        Json<SendAccepted>,
        /// Where the send's progress can be read.
        #[oai(header = "Location")]
        String,
        /// `true` when this answer repeats an earlier send with the same Idempotency-Key.
        #[oai(header = "Idempotent-Replayed")]
        Option<bool>,
    ),
}

/// A send to many, accepted.
#[derive(Object, Debug, Clone, PartialEq)]
pub struct SendAccepted {
    pub send_id: String,
    /// Position of the send's request.
    pub cursor: String,
}

impl From<SendError> for ApiError {
    fn from(err: SendError) -> Self {
        let detail = err.to_string();
        match err {
            SendError::AlreadyExists => Self::conflict("already-exists", "Already exists", detail),
            SendError::NotFound => Self::not_found(detail),
            SendError::Unavailable(_) => Self::unavailable(detail),
        }
    }
}

#[derive(ApiResponse)]
pub enum ReceiptResponse {
    /// The command was applied (or the notification already was in that state).
    #[oai(status = 200)]
    Ok(Json<ReceiptView>),
}

#[derive(ApiResponse)]
pub enum NotificationResponse {
    #[oai(status = 200)]
    Ok(Json<NotificationView>),
}

/// A channel reporting that it delivered the notification.
#[derive(Object, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct DeliverRequest {
    /// One of the notification's channels.
    pub channel: Text<ChannelRule>,
}

/// A channel reporting that it could not deliver the notification.
#[derive(Object, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct FailureRequest {
    /// One of the notification's channels.
    pub channel: Text<ChannelRule>,
    /// Why (`mailbox full`): 1–500 characters, one line.
    pub reason: Text<FailureReasonRule>,
}

pub struct NotificationsApi {
    pub state: Arc<AppState>,
}

fn parse_id(id: &str) -> Result<NotificationId, ApiError> {
    NotificationId::parse(id).map_err(|e| ApiError::malformed("path.id", e.0))
}

/// Whether `principal` may see notification `id`: `Open`, a `read` key, the
/// key that sent it, its recipient. `recipient`, when the caller has it,
/// spares a read of the notification's first event.
pub async fn may_see(
    state: &AppState,
    principal: &Principal,
    id: NotificationId,
    recipient: Option<&UserId>,
) -> Result<bool, ApiError> {
    match (principal, recipient) {
        (Principal::Open, _) => return Ok(true),
        (p, _) if p.has(Scope::Read) => return Ok(true),
        (Principal::User(token), Some(recipient)) => return Ok(token.user == *recipient),
        _ => {}
    }
    let first = state
        .log
        .stream(Notification::TYPE, &id.to_string(), 0, 1)
        .await?;
    let Some(first) = first.first() else {
        return Ok(false);
    };
    let origin = first.metadata[crate::commands::metadata::ACTOR].as_str();
    // Through the decoder every reader uses, so an old shape is upcast.
    let owner = match first.decode::<NotificationEvent>() {
        Ok(NotificationEvent::NotificationCreated { recipient, .. }) => recipient,
        _ => return Ok(false),
    };
    Ok(principal.reaches(Some(Scope::Read), &owner, origin))
}

pub fn metadata(ctx: &RequestContext) -> CommandMetadata {
    CommandMetadata {
        request_id: ctx.request_id.clone(),
        correlation_id: ctx.correlation_id.clone(),
        causation_id: None,
        actor: ctx.principal.actor(),
        actor_name: ctx.principal.actor_name().map(str::to_owned),
        on_behalf_of: ctx.on_behalf_of.clone(),
        idempotency: None,
        command_id: None,
        bulk: None,
    }
}

fn receipt_view(receipt: Receipt) -> Result<ReceiptResponse, ApiError> {
    let notification = NotificationView::from_state(&receipt.state, receipt.position)
        .ok_or_else(|| ApiError::not_found("no notification with this id exists"))?;
    Ok(ReceiptResponse::Ok(Json(ReceiptView {
        id: receipt.id.to_string(),
        cursor: receipt.position.to_cursor(),
        changed: receipt.changed,
        notification,
    })))
}

impl NotificationsApi {
    /// Records a send to many; the fan-out creates its notifications.
    /// Where the create's recipient stands in the experiment it names
    /// (None: it names none).
    async fn enroll(
        &self,
        request: &CreateNotificationRequest,
        meta: &CommandMetadata,
    ) -> Result<Option<Enrollment>, ApiError> {
        let Some(raw) = &request.experiment else {
            return Ok(None);
        };
        let id =
            ExperimentId::parse(raw.as_str()).map_err(|e| ApiError::invalid("experiment", e.0))?;
        // A send to many is enrolled recipient by recipient as its pages
        // fan out (`send`).
        let (Some(user), None, None) = (&request.recipient, &request.recipients, &request.topic)
        else {
            return Ok(None);
        };
        let user = UserId::parse(user.as_str()).map_err(|e| ApiError::invalid("recipient", e.0))?;
        let category = Category::parse(request.category.as_str())
            .map_err(|e| ApiError::invalid("category", e.0))?;
        self.state
            .experiments
            .enroll(&id, &user, &category, meta)
            .await
            .map(Some)
            .map_err(super::problem::enroll_problem)
    }

    async fn send(
        &self,
        id: uuid::Uuid,
        content: SendContent,
        target: SendTarget,
        meta: &CommandMetadata,
    ) -> Result<CreateResponse, ApiError> {
        let expected = match &target {
            SendTarget::Recipients(list) => list.len() as u64,
            SendTarget::Topic(topic) => {
                match self.state.topics.get(&topics::count_key(topic)).await? {
                    Some(Keyed {
                        row: topics::Row::Count { subscribers },
                        ..
                    }) => subscribers,
                    _ => 0,
                }
            }
        };
        let id = id.to_string();
        let result = self
            .state
            .sends
            .execute(
                &id,
                |at| SendCommand::Request {
                    id: id.clone(),
                    content: Box::new(content.clone()),
                    target: target.clone(),
                    expected,
                    at,
                },
                meta,
                meta.idempotency.is_none(),
            )
            .await;
        let (position, replayed) = match (result, &meta.idempotency) {
            (Ok(decided), _) => (decided.position, None),
            (Err(CommandError::Rejected(SendError::AlreadyExists)), Some((key, hash))) => {
                let first = self.state.log.stream("Send", &id, 0, 1).await?;
                let first = first.first().ok_or_else(|| {
                    ApiError::internal(&std::io::Error::other("a send exists without events"))
                })?;
                let get = |k: &str| first.metadata[k].as_str();
                if get(crate::commands::metadata::IDEMPOTENCY_KEY) != Some(key)
                    || get(crate::commands::metadata::REQUEST_HASH) != Some(hash)
                {
                    return Err(CommandError::<SendError>::IdempotencyMismatch(key.clone()).into());
                }
                (first.position, Some(true))
            }
            (Err(e), _) => return Err(e.into()),
        };
        Ok(CreateResponse::Accepted(
            Json(SendAccepted {
                send_id: id.clone(),
                cursor: position.to_cursor(),
            }),
            format!("/v1/sends/{id}"),
            replayed,
        ))
    }

    async fn command(
        &self,
        id: &str,
        ctx: &RequestContext,
        command: impl Fn(Timestamp) -> NotificationCommand,
    ) -> Result<ReceiptResponse, ApiError> {
        let id = parse_id(id)?;
        // No key may change every notification; a send key those it sent,
        // a user their own. Anything else is as if it did not exist.
        let principal = &ctx.principal;
        let guard = |state: &Notification, origin: Option<&str>| match &state.content {
            Some(content) if principal.reaches(None, &content.recipient, origin) => Ok(()),
            _ => Err(NotificationError::NotFound),
        };
        let receipt = self
            .state
            .commands
            .execute_guarded(id, command, &metadata(ctx), &guard)
            .await?;
        receipt_view(receipt)
    }
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Notifications")]
impl NotificationsApi {
    /// Create a notification
    ///
    /// Records it and, for an in-app notification without `deliver_at`, delivers
    /// it to the recipient's inbox at once. Send an `Idempotency-Key` to make
    /// retries safe: the same key with the same body answers the first create
    /// again; the same key with another body is refused (422).
    #[oai(
        path = "/notifications",
        method = "post",
        operation_id = "createNotification"
    )]
    #[instrument(skip_all)]
    async fn create(
        &self,
        ctx: Data<&RequestContext>,
        /// Makes retries safe; 1–255 visible ASCII characters.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<Text<IdempotencyKeyRule>>>,
        body: StrictJson<CreateNotificationRequest>,
    ) -> Result<CreateResponse, ApiError> {
        let request = body.0;
        let ask = request.template_ask()?;
        let variables = ask
            .as_ref()
            .map(|a| a.variables.clone())
            .unwrap_or_default();
        let enrollment = self.enroll(&request, &metadata(&ctx)).await?;
        // A variant's template wins over the send's own, with its variables.
        let ask = match enrollment.as_ref().and_then(|e| e.arm.as_ref()) {
            Some(Arm::Template { key, version }) => Some(TemplateAsk {
                key: key.clone(),
                version: *version,
                variables: ask.map(|a| a.variables).unwrap_or_default(),
            }),
            _ => ask,
        };
        let template = match ask {
            None => None,
            Some(ask) => Some(
                self.state
                    .templates
                    .resolve(&ask.key, ask.version, &ask.variables)
                    .await
                    .map_err(|e| super::problem::template_problem(e, "template_version"))?,
            ),
        };
        let (addressee, mut content) = request.validate(template)?;
        let mut recorded = None;
        if let Some(enrollment) = enrollment {
            if let Some(Arm::Content { title, body }) = enrollment.arm {
                content.title = title;
                content.body = body;
                content.template = None;
            }
            recorded = enrollment.recorded;
        }
        let mut meta = metadata(&ctx);
        let uuid = match idempotency_key.0.as_ref().map(Text::as_str) {
            Some(key) => {
                let key = parse_idempotency_key(key)?;
                meta.idempotency = Some((key.to_owned(), request.fingerprint()));
                // Scoped to the principal: two keys (or users) sending the
                // same Idempotency-Key make two notifications.
                match ctx.principal.idempotency_scope() {
                    None => id_for_idempotency_key(key),
                    Some(scope) => id_for_idempotency_key(&format!("{scope}\n{key}")),
                }
            }
            None => uuid::Uuid::now_v7(),
        };
        let user = match addressee {
            Addressee::One(user) => user,
            Addressee::Many(target) => {
                let mut content = content;
                if let Some(raw) = &request.experiment {
                    let id = ExperimentId::parse(raw.as_str())
                        .map_err(|e| ApiError::invalid("experiment", e.0))?;
                    content.experiment = self
                        .state
                        .experiments
                        .prepare_send(&id, &content.category, &variables, &self.state.templates)
                        .await
                        .map_err(|e| match e {
                            SendProblem::Enroll(e) => super::problem::enroll_problem(e),
                            SendProblem::Template(e) => {
                                super::problem::template_problem(e, "template_version")
                            }
                        })?
                        .map(Box::new);
                }
                return self.send(uuid, content, target, &meta).await;
            }
        };
        let mut content = content.for_recipient(user);
        content.experiment = recorded;
        let id = NotificationId(uuid);
        let (id, position, replayed) = match self.state.commands.create(id, content, &meta).await? {
            Created::New(receipt) => (receipt.id, receipt.position, None),
            Created::Replayed { id, position } => (id, position, Some(true)),
        };
        Ok(CreateResponse::Created(
            Json(CreatedView {
                id: id.to_string(),
                cursor: position.to_cursor(),
            }),
            format!("/v1/notifications/{id}"),
            replayed,
        ))
    }

    /// Get a notification
    ///
    /// From the inbox read model. Pass the `cursor` of a command's answer as
    /// `min_position` to wait until the read model includes that command.
    #[oai(
        path = "/notifications/:id",
        method = "get",
        operation_id = "getNotification"
    )]
    async fn get(
        &self,
        ctx: Data<&RequestContext>,
        id: Path<Text<NotificationIdRule>>,
        /// A cursor; answer only once the read model has reached it (waits up to the configured limit).
        min_position: Query<Option<Text<LogCursorRule>>>,
    ) -> Result<NotificationResponse, ApiError> {
        let id = parse_id(id.0.as_str())?;
        wait_for(
            &self.state,
            &self.state.projections.inbox().projector,
            min_position.0.as_ref().map(Text::as_str),
        )
        .await?;
        let row = self.state.inbox.get(id).await?.ok_or_else(|| {
            ApiError::not_found(format!("no notification {id} exists (or it was deleted)"))
        })?;
        let recipient = row.state.content.as_ref().map(|c| &c.recipient);
        if !may_see(&self.state, &ctx.principal, id, recipient).await? {
            return Err(ApiError::not_found(format!(
                "no notification {id} exists (or it was deleted)"
            )));
        }
        let view = NotificationView::from_state(&row.state, row.last_position)
            .ok_or_else(|| ApiError::not_found(format!("no notification {id} exists")))?;
        Ok(NotificationResponse::Ok(Json(view)))
    }

    /// Mark read
    ///
    /// Also marks it seen. Marking a read notification read changes nothing.
    #[oai(
        path = "/notifications/:id/read",
        method = "post",
        operation_id = "markRead"
    )]
    async fn read(
        &self,
        ctx: Data<&RequestContext>,
        id: Path<Text<NotificationIdRule>>,
    ) -> Result<ReceiptResponse, ApiError> {
        self.command(id.0.as_str(), &ctx, |at| NotificationCommand::MarkRead {
            at,
        })
        .await
    }

    /// Mark unread
    #[oai(
        path = "/notifications/:id/unread",
        method = "post",
        operation_id = "markUnread"
    )]
    async fn unread(
        &self,
        ctx: Data<&RequestContext>,
        id: Path<Text<NotificationIdRule>>,
    ) -> Result<ReceiptResponse, ApiError> {
        self.command(id.0.as_str(), &ctx, |at| NotificationCommand::MarkUnread {
            at,
        })
        .await
    }

    /// Mark seen
    ///
    /// Seen means it was shown (the badge count drops); read means it was opened.
    #[oai(
        path = "/notifications/:id/seen",
        method = "post",
        operation_id = "markSeen"
    )]
    async fn seen(
        &self,
        ctx: Data<&RequestContext>,
        id: Path<Text<NotificationIdRule>>,
    ) -> Result<ReceiptResponse, ApiError> {
        self.command(id.0.as_str(), &ctx, |at| NotificationCommand::MarkSeen {
            at,
        })
        .await
    }

    /// Record a click
    ///
    /// Also marks it seen and read.
    #[oai(
        path = "/notifications/:id/click",
        method = "post",
        operation_id = "click"
    )]
    async fn click(
        &self,
        ctx: Data<&RequestContext>,
        id: Path<Text<NotificationIdRule>>,
    ) -> Result<ReceiptResponse, ApiError> {
        self.command(id.0.as_str(), &ctx, |at| NotificationCommand::Click { at })
            .await
    }

    /// Archive
    ///
    /// Archived notifications leave the inbox (list them with `archived=true`)
    /// and no longer count as unread or unseen.
    #[oai(
        path = "/notifications/:id/archive",
        method = "post",
        operation_id = "archive"
    )]
    async fn archive(
        &self,
        ctx: Data<&RequestContext>,
        id: Path<Text<NotificationIdRule>>,
    ) -> Result<ReceiptResponse, ApiError> {
        self.command(id.0.as_str(), &ctx, |at| NotificationCommand::Archive {
            at,
        })
        .await
    }

    /// Unarchive
    #[oai(
        path = "/notifications/:id/unarchive",
        method = "post",
        operation_id = "unarchive"
    )]
    async fn unarchive(
        &self,
        ctx: Data<&RequestContext>,
        id: Path<Text<NotificationIdRule>>,
    ) -> Result<ReceiptResponse, ApiError> {
        self.command(id.0.as_str(), &ctx, |at| NotificationCommand::Unarchive {
            at,
        })
        .await
    }

    /// Cancel
    ///
    /// Only before delivery (pending or scheduled); 409 once delivered.
    #[oai(
        path = "/notifications/:id/cancel",
        method = "post",
        operation_id = "cancel"
    )]
    async fn cancel(
        &self,
        ctx: Data<&RequestContext>,
        id: Path<Text<NotificationIdRule>>,
    ) -> Result<ReceiptResponse, ApiError> {
        self.command(id.0.as_str(), &ctx, |at| NotificationCommand::Cancel { at })
            .await
    }

    /// Record a delivery
    ///
    /// For channel workers: the notification was delivered on `channel`.
    #[oai(
        path = "/notifications/:id/deliver",
        method = "post",
        operation_id = "deliver"
    )]
    async fn deliver(
        &self,
        ctx: Data<&RequestContext>,
        id: Path<Text<NotificationIdRule>>,
        body: StrictJson<DeliverRequest>,
    ) -> Result<ReceiptResponse, ApiError> {
        let channel = Channel::parse(body.0.channel.as_str())
            .map_err(|e| ApiError::invalid("channel", e.0))?;
        self.command(id.0.as_str(), &ctx, |at| NotificationCommand::Deliver {
            channel,
            at,
        })
        .await
    }

    /// Record a failed delivery
    ///
    /// For channel workers: delivery on `channel` failed, and why. The
    /// channel stays deliverable (a retry that works records the delivery);
    /// `explain` and analytics tell failures from suppressions.
    #[oai(
        path = "/notifications/:id/fail",
        method = "post",
        operation_id = "failDelivery"
    )]
    async fn fail(
        &self,
        ctx: Data<&RequestContext>,
        id: Path<Text<NotificationIdRule>>,
        body: StrictJson<FailureRequest>,
    ) -> Result<ReceiptResponse, ApiError> {
        let channel =
            Channel::parse(body.0.channel.as_str()).map_err(|e| ApiError::invalid("channel", e.0));
        let reason = FailureReason::parse(body.0.reason.as_str())
            .map_err(|e| ApiError::invalid("reason", e.0));
        let (channel, reason) = (channel?, reason?);
        self.command(id.0.as_str(), &ctx, |at| {
            NotificationCommand::FailDelivery {
                channel,
                reason: reason.clone(),
                at,
            }
        })
        .await
    }

    /// Delete
    ///
    /// The notification leaves the inbox for good; its history stays in the event log.
    #[oai(
        path = "/notifications/:id",
        method = "delete",
        operation_id = "deleteNotification"
    )]
    async fn delete(
        &self,
        ctx: Data<&RequestContext>,
        id: Path<Text<NotificationIdRule>>,
    ) -> Result<ReceiptResponse, ApiError> {
        self.command(id.0.as_str(), &ctx, |at| NotificationCommand::Delete { at })
            .await
    }
}
