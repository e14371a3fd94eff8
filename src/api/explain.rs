//! `GET /v1/notifications/{id}/explain`: why each channel asked for was or
//! was not used, in plain words, from the notification's events alone (the
//! suppressions name their rule, whose setting decided and its version).

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::context::RequestContext;
use super::params::{ChannelRule, LifecycleRule, NotificationIdRule, OutcomeRule, Text};
use super::problem::ApiError;
use super::views::rfc3339;
use super::ApiTags;
use crate::domain::notification::SuppressedChannel;
use crate::domain::preferences::{Level, SuppressionRule};
use crate::domain::{Channel, Lifecycle, Notification, NotificationEvent, NotificationId};
use crate::AppState;

/// What became of one channel.
#[derive(Object, Debug)]
pub struct ChannelExplanation {
    pub channel: Text<ChannelRule>,
    /// `delivered`, `suppressed` (not used, and never will be), `pending`
    /// (held, scheduled, held for a digest, or waiting for the channel's
    /// worker), `failed` (the worker reported a failure and no delivery
    /// since) or `digested` (a digest carried it instead).
    pub outcome: Text<OutcomeRule>,
    /// Why, in plain words.
    pub reason: String,
    /// A suppression's rule (`opt_out`, `category_default`, `quiet_hours`,
    /// `missing_address`), or `cancelled`.
    #[oai(skip_serializing_if_is_none)]
    pub rule: Option<String>,
    /// Whose setting decided (`user`, `tenant`, `category`).
    #[oai(skip_serializing_if_is_none)]
    pub level: Option<String>,
    /// That setting's version when it decided.
    #[oai(skip_serializing_if_is_none)]
    pub version: Option<u64>,
    /// When the outcome was recorded (RFC 3339 UTC).
    #[oai(skip_serializing_if_is_none)]
    pub at: Option<String>,
    /// Quiet hours: held until then.
    #[oai(skip_serializing_if_is_none)]
    pub until: Option<String>,
}

#[derive(Object, Debug)]
pub struct Explanation {
    pub id: String,
    pub recipient: String,
    pub category: String,
    pub lifecycle: Text<LifecycleRule>,
    /// Where its title and body came from, in plain words: as sent, or
    /// which template version in which locale.
    pub content: String,
    /// Each channel asked for, in the order asked.
    pub channels: Vec<ChannelExplanation>,
}

#[derive(ApiResponse)]
pub enum ExplainResponse {
    #[oai(status = 200)]
    Ok(Json<Explanation>),
}

fn whose(s: &SuppressedChannel) -> &'static str {
    match s.level {
        Level::Tenant => "the tenant's defaults",
        Level::Category => "the category's settings",
        _ => "the recipient's preferences",
    }
}

fn suppression_reason(channel: Channel, category: &str, s: &SuppressedChannel) -> String {
    let v = s.version;
    match s.rule {
        SuppressionRule::OptOut if s.level == Level::Tenant => format!(
            "the tenant's defaults turn `{channel}` off for `{category}` (tenant defaults version {v}), and the recipient did not turn it on"
        ),
        SuppressionRule::OptOut => format!(
            "the recipient turned `{channel}` off for `{category}` (preferences version {v})"
        ),
        SuppressionRule::CategoryDefault => format!(
            "`{channel}` is not among the default channels of `{category}` (category settings version {v}), and no preference turned it on"
        ),
        SuppressionRule::MissingAddress => format!(
            "the recipient's profile has no address for `{channel}` (profile version {v})"
        ),
        SuppressionRule::QuietHours => format!(
            "held by the recipient's quiet hours (preferences version {v})"
        ),
        SuppressionRule::Holdout => {
            "the recipient is in the experiment's holdout, which receives nothing".to_owned()
        }
    }
}

/// What became of each channel of `n`.
pub fn explain(n: &Notification) -> Vec<ChannelExplanation> {
    let Some(content) = &n.content else {
        return Vec::new();
    };
    let category = content.category.as_str();
    content
        .channels
        .iter()
        .map(|&channel| {
            let suppressed = n.suppressed.get(&channel);
            let mut e = ChannelExplanation {
                channel: Text::new(channel.as_str()),
                outcome: Text::new("pending"),
                reason: String::new(),
                rule: suppressed.map(|s| s.rule.as_str().to_owned()),
                level: suppressed.map(|s| s.level.as_str().to_owned()),
                version: suppressed.map(|s| s.version),
                at: suppressed.map(|s| rfc3339(s.at)),
                until: suppressed.and_then(|s| s.until).map(rfc3339),
            };
            let held = suppressed.filter(|s| s.is_hold());
            let held_words = |s: &SuppressedChannel| {
                format!(
                    "{} until {}",
                    suppression_reason(channel, category, s),
                    s.until.map_or_else(|| "they end".into(), rfc3339)
                )
            };
            if let Some(held) = &n.held {
                match (n.lifecycle, held.digest_id, &held.batch_id) {
                    (Lifecycle::Digested, Some(digest), batch) => {
                        e.outcome = Text::new("digested");
                        e.reason = format!(
                            "carried by digest {digest}{} instead of delivered on its own",
                            batch.as_ref().map(|b| format!(" of batch {b}")).unwrap_or_default()
                        );
                        return e;
                    }
                    (Lifecycle::Batched, _, batch) => {
                        e.reason = match batch {
                            Some(b) => format!(
                                "held for a digest in batch {b} (key `{}`, batching policy version {})",
                                held.key, held.policy_version
                            ),
                            None => format!(
                                "held for a digest (key `{}`, batching policy version {}); being added to its batch",
                                held.key, held.policy_version
                            ),
                        };
                        return e;
                    }
                    _ => {}
                }
            }
            if let Some(at) = n.deliveries.get(&channel) {
                e.outcome = Text::new("delivered");
                e.at = Some(rfc3339(*at));
                e.reason = match held {
                    Some(s) => format!(
                        "delivered at {} after being {}",
                        rfc3339(*at),
                        held_words(s)
                    ),
                    None => format!("delivered at {}", rfc3339(*at)),
                };
                return e;
            }
            if let Some(s) = suppressed.filter(|s| !s.is_hold()) {
                e.outcome = Text::new("suppressed");
                e.reason = format!(
                    "suppressed by {}: {}",
                    whose(s),
                    suppression_reason(channel, category, s)
                );
                return e;
            }
            if n.lifecycle == Lifecycle::Cancelled {
                e.outcome = Text::new("suppressed");
                e.rule = Some("cancelled".into());
                e.at = n.cancelled_at.map(rfc3339);
                e.reason = format!(
                    "the notification was cancelled before `{channel}` delivered it{}",
                    n.cancelled_at
                        .map(|t| format!(" (at {})", rfc3339(t)))
                        .unwrap_or_default()
                );
                return e;
            }
            if let Some(f) = n.failures.get(&channel) {
                e.outcome = Text::new("failed");
                e.at = Some(rfc3339(f.at));
                e.reason = format!(
                    "the `{channel}` worker reported a failure at {}: {}",
                    rfc3339(f.at),
                    f.reason.as_str()
                );
                return e;
            }
            e.reason = match (held, content.deliver_at) {
                (Some(s), _) => held_words(s),
                (None, Some(t)) if n.lifecycle == Lifecycle::Scheduled => {
                    format!("scheduled for {}", rfc3339(t))
                }
                _ if channel == Channel::InApp => "waiting to be delivered".into(),
                _ => format!("waiting for the `{channel}` worker to report the delivery"),
            };
            e
        })
        .collect()
}

/// Where a notification's text came from.
fn content_origin(n: &Notification) -> String {
    let said = text_origin(n);
    match &n.experiment {
        None => said,
        Some(e) => match &e.variant {
            None => format!(
                "{said}; held out of experiment `{}`: nothing is sent",
                e.experiment
            ),
            Some(v) => format!(
                "{said}; sent under variant `{v}` of experiment `{}`",
                e.experiment
            ),
        },
    }
}

fn text_origin(n: &Notification) -> String {
    match &n.template {
        None => "title and body as sent".to_owned(),
        Some(t) => {
            let mut said = format!(
                "rendered from template `{}` version {} in locale `{}`",
                t.key, t.version, t.locale
            );
            if !n.channel_content.is_empty() {
                let own: Vec<&str> = n.channel_content.keys().map(|c| c.as_str()).collect();
                said.push_str(&format!("; {} with text of its own", own.join(", ")));
            }
            said
        }
    }
}

pub struct ExplainApi {
    pub state: Arc<AppState>,
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Notifications")]
impl ExplainApi {
    /// Why each channel was or was not used
    ///
    /// From the notification's events alone: delivered (when), suppressed
    /// (the rule, whose setting and its version), pending (held by quiet
    /// hours until when, scheduled, or waiting for the channel's worker) or
    /// failed (what the worker reported).
    #[oai(
        path = "/notifications/:id/explain",
        method = "get",
        operation_id = "explain"
    )]
    async fn explain(
        &self,
        ctx: Data<&RequestContext>,
        id: Path<Text<NotificationIdRule>>,
    ) -> Result<ExplainResponse, ApiError> {
        let id = NotificationId::parse(id.0.as_str())
            .map_err(|e| ApiError::malformed("path.id", e.0))?;
        let missing = || ApiError::not_found(format!("no notification {id} exists"));
        let mut state = Notification::default();
        let mut after = 0;
        loop {
            let page = self
                .state
                .log
                .stream("Notification", &id.to_string(), after, 1000)
                .await?;
            for event in &page {
                let payload = event.decode::<NotificationEvent>().map_err(|reason| {
                    ApiError::conflict(
                        "unreadable-event",
                        "The history cannot be read",
                        format!(
                            "event {} of this notification cannot be read ({reason}); see the poison-event runbook",
                            event.sequence
                        ),
                    )
                })?;
                state.apply(payload);
                after = event.sequence;
            }
            if page.len() < 1000 {
                break;
            }
        }
        let Some(content) = &state.content else {
            return Err(missing());
        };
        if !super::notifications::may_see(&self.state, &ctx.principal, id, Some(&content.recipient))
            .await?
        {
            return Err(missing());
        }
        Ok(ExplainResponse::Ok(Json(Explanation {
            id: id.to_string(),
            recipient: content.recipient.as_str().to_owned(),
            category: content.category.as_str().to_owned(),
            lifecycle: Text::new(state.lifecycle.as_str()),
            content: content_origin(&state),
            channels: explain(&state),
        })))
    }
}
