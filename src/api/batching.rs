//! `GET|PUT|DELETE /v1/categories/{category}/batching`: a category's
//! batching policy (an admin's), versioned.

use std::sync::Arc;

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
    CategoryRule, EveryRule, LocalTimeRule, TemplateKeyRule, Text, WeekdayRule, WindowKindRule,
};
use super::problem::{ApiError, FieldProblem};
use super::views::rfc3339;
use super::ApiTags;
use crate::domain::batching::{
    BatchPolicy, Batching, BatchingCommand, BatchingError, Cadence, Every, KeyTemplate, Schedule,
    Weekday, Window,
};
use crate::domain::contact::TimeZone;
use crate::domain::preferences::LocalTime;
use crate::domain::simulation::Past;
use crate::domain::template::TemplateKey;
use crate::domain::{Category, UserId};
use crate::storage::Position;
use crate::AppState;

/// When a batch closes by time, counted from its first item.
#[derive(Object, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
#[oai(rename = "BatchWindow")]
pub struct WindowBody {
    /// `fixed`: `seconds` after the first item; `sliding`: `seconds`
    /// after the latest item, at most `max_seconds` after the first.
    pub kind: Text<WindowKindRule>,
    #[oai(validator(minimum(value = "1"), maximum(value = "604800")))]
    pub seconds: u32,
    /// Only for `sliding`: at least `seconds`.
    #[serde(default)]
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "604800")))]
    pub max_seconds: Option<u32>,
}

/// When a batch closes by the clock, in the recipient's time zone.
#[derive(Object, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
#[oai(rename = "BatchSchedule")]
pub struct ScheduleBody {
    pub every: Text<EveryRule>,
    /// `HH:MM`, local to the recipient (the profile's time zone; UTC
    /// without one).
    pub at: Text<LocalTimeRule>,
    /// Only for `week`.
    #[serde(default)]
    #[oai(nullable)]
    pub weekday: Option<Text<WeekdayRule>>,
}

/// A batching policy: `window` or `schedule`, not both.
#[derive(Object, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
#[oai(rename = "BatchingPolicy")]
pub struct PolicyBody {
    #[serde(default, deserialize_with = "object::optional")]
    #[oai(nullable)]
    pub window: Option<WindowBody>,
    #[serde(default, deserialize_with = "object::optional")]
    #[oai(nullable)]
    pub schedule: Option<ScheduleBody>,
    /// A batch that reaches this many items (2–1000) flushes at once.
    #[oai(validator(minimum(value = "2"), maximum(value = "1000")))]
    pub max_items: u32,
    /// The batch key: a template over the notification's fields
    /// (`recipient`, `category`, `group_key`, `tenant`, `data`). Absent:
    /// `{{ recipient }}/{{ group_key }}`.
    #[serde(default)]
    #[oai(nullable, validator(min_length = 1, max_length = 200))]
    pub key: Option<String>,
    /// The first item of a batch is delivered at once, the rest digested.
    #[serde(default)]
    pub first_item_immediately: bool,
    /// Fewer items than this at the flush are delivered one by one
    /// instead of as a digest. Absent: 1 (always a digest); at most
    /// `max_items`.
    #[serde(default)]
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "1000")))]
    pub min_items: Option<u32>,
    /// A template the digests' title and body render from (its published
    /// version at each flush), with the variables `count`, `items`,
    /// `first`, `last` (each `{id, title}`), `actors`, `actor_count`,
    /// `batch_id`, `category` and `group_key`. Absent: the built-in
    /// summary ("3 new comment on post-42").
    #[serde(default)]
    #[oai(nullable)]
    pub template: Option<Text<TemplateKeyRule>>,
}

/// A category's batching, as answered.
#[derive(Object, Debug)]
#[oai(rename = "CategoryBatching")]
pub struct BatchingView {
    pub category: String,
    /// False: its notifications are not batched.
    pub enabled: bool,
    /// The policy in force (absent when off).
    #[oai(skip_serializing_if_is_none)]
    pub policy: Option<PolicyView>,
    /// How many changes it has had (0: never set). A batch keeps the
    /// version it opened with.
    pub version: u64,
    #[oai(nullable)]
    pub updated_at: Option<String>,
    pub cursor: String,
    #[oai(skip_serializing_if_is_none)]
    pub changed: Option<bool>,
}

/// A policy as answered: the shape it was set in, with the defaults filled.
#[derive(Object, Debug)]
#[oai(rename = "BatchingPolicyView")]
pub struct PolicyView {
    #[oai(skip_serializing_if_is_none)]
    pub window: Option<WindowView>,
    #[oai(skip_serializing_if_is_none)]
    pub schedule: Option<ScheduleView>,
    pub max_items: u32,
    pub key: String,
    pub first_item_immediately: bool,
    pub min_items: u32,
    /// What digests render from (absent: the built-in summary).
    #[oai(skip_serializing_if_is_none)]
    pub template: Option<String>,
}

#[derive(Object, Debug)]
#[oai(rename = "BatchWindowView")]
pub struct WindowView {
    pub kind: Text<WindowKindRule>,
    pub seconds: u32,
    #[oai(skip_serializing_if_is_none)]
    pub max_seconds: Option<u32>,
}

#[derive(Object, Debug)]
#[oai(rename = "BatchScheduleView")]
pub struct ScheduleView {
    pub every: Text<EveryRule>,
    pub at: Text<LocalTimeRule>,
    #[oai(skip_serializing_if_is_none)]
    pub weekday: Option<Text<WeekdayRule>>,
}

impl PolicyView {
    fn of(policy: &BatchPolicy) -> Self {
        let (window, schedule) = match &policy.cadence {
            Cadence::Window(Window::Fixed { seconds }) => (
                Some(WindowView {
                    kind: Text::new("fixed"),
                    seconds: *seconds,
                    max_seconds: None,
                }),
                None,
            ),
            Cadence::Window(Window::Sliding {
                seconds,
                max_seconds,
            }) => (
                Some(WindowView {
                    kind: Text::new("sliding"),
                    seconds: *seconds,
                    max_seconds: Some(*max_seconds),
                }),
                None,
            ),
            Cadence::Schedule(s) => (
                None,
                Some(ScheduleView {
                    every: Text::new(match s.every {
                        Every::Day => "day",
                        Every::Week => "week",
                    }),
                    at: Text::new(s.at.to_string()),
                    weekday: s.weekday.map(|d| Text::new(d.as_str())),
                }),
            ),
        };
        Self {
            window,
            schedule,
            max_items: policy.max_items,
            key: policy.key_template().to_owned(),
            first_item_immediately: policy.first_item_immediately,
            min_items: policy.min_items,
            template: policy.template.as_ref().map(|t| t.as_str().to_owned()),
        }
    }
}

impl BatchingView {
    fn of(
        category: &Category,
        state: &Batching,
        position: Position,
        changed: Option<bool>,
    ) -> Self {
        Self {
            category: category.as_str().to_owned(),
            enabled: state.policy.is_some(),
            policy: state.policy.as_ref().map(PolicyView::of),
            version: state.version,
            updated_at: state.changed_at.map(rfc3339),
            cursor: position.to_cursor(),
            changed,
        }
    }
}

#[derive(ApiResponse)]
pub enum BatchingResponse {
    #[oai(status = 200)]
    Ok(Json<BatchingView>),
}

impl From<BatchingError> for ApiError {
    fn from(err: BatchingError) -> Self {
        match err {}
    }
}

impl PolicyBody {
    /// The policy, or every problem with it (each naming its field).
    pub(super) fn parse(&self) -> Result<BatchPolicy, ApiError> {
        self.parse_in("")
    }

    /// `parse`, the fields named under `prefix` (`policy.`).
    pub(super) fn parse_in(&self, prefix: &str) -> Result<BatchPolicy, ApiError> {
        let mut errors = Vec::new();
        let mut problem = |field: &str, message: String| {
            errors.push(FieldProblem {
                field: format!("{prefix}{field}"),
                message,
            })
        };
        let cadence = match (&self.window, &self.schedule) {
            (Some(_), Some(_)) => {
                problem(
                    "schedule",
                    "a policy has a `window` or a `schedule`, not both".into(),
                );
                None
            }
            (None, None) => {
                problem(
                    "window",
                    "is missing; give a `window` (fixed or sliding) or a `schedule`".into(),
                );
                None
            }
            (Some(w), None) => match (w.kind.as_str(), w.max_seconds) {
                ("fixed", None) => Some(Cadence::Window(Window::Fixed { seconds: w.seconds })),
                ("fixed", Some(_)) => {
                    problem(
                        "window.max_seconds",
                        "is only for a `sliding` window".into(),
                    );
                    None
                }
                ("sliding", Some(max_seconds)) => Some(Cadence::Window(Window::Sliding {
                    seconds: w.seconds,
                    max_seconds,
                })),
                ("sliding", None) => {
                    problem(
                        "window.max_seconds",
                        "is missing; a sliding window is bounded (the longest a batch stays open)"
                            .into(),
                    );
                    None
                }
                (other, _) => {
                    problem(
                        "window.kind",
                        format!("`{other}` is not a window; use fixed or sliding"),
                    );
                    None
                }
            },
            (None, Some(s)) => {
                let every = match s.every.as_str() {
                    "day" => Some(Every::Day),
                    "week" => Some(Every::Week),
                    other => {
                        problem(
                            "schedule.every",
                            format!("`{other}` is not a period; use day or week"),
                        );
                        None
                    }
                };
                let at = LocalTime::parse(s.at.as_str())
                    .map_err(|e| problem("schedule.at", e.0))
                    .ok();
                let weekday = match &s.weekday {
                    None => Some(None),
                    Some(d) => match Weekday::parse(d.as_str()) {
                        Some(d) => Some(Some(d)),
                        None => {
                            problem(
                                "schedule.weekday",
                                format!("`{}` is not a weekday; use mon .. sun", d.as_str()),
                            );
                            None
                        }
                    },
                };
                match (every, at, weekday) {
                    (Some(every), Some(at), Some(weekday)) => {
                        Some(Cadence::Schedule(Schedule { every, at, weekday }))
                    }
                    _ => None,
                }
            }
        };
        let key = match &self.key {
            None => None,
            Some(raw) => KeyTemplate::parse(raw, crate::render::check_template)
                .map_err(|e| problem("key", e.0))
                .ok(),
        };
        let key_ok = self.key.is_none() || key.is_some();
        let template = match &self.template {
            None => None,
            Some(raw) => TemplateKey::parse(raw.as_str())
                .map_err(|e| problem("template", e.0))
                .ok(),
        };
        let policy = cadence.and_then(|cadence| {
            match BatchPolicy::new(
                cadence,
                self.max_items,
                key,
                self.first_item_immediately,
                self.min_items,
            ) {
                Ok(p) => Some(p.with_template(template)),
                Err(problems) => {
                    for p in problems {
                        problem(p.field, p.message);
                    }
                    None
                }
            }
        });
        match policy {
            Some(p) if errors.is_empty() && key_ok => Ok(p),
            _ => Err(ApiError::invalid_fields(errors)),
        }
    }
}

fn parse_category(raw: &str) -> Result<Category, ApiError> {
    Category::parse(raw).map_err(|e| ApiError::invalid("path.category", e.0))
}

pub struct BatchingApi {
    pub state: Arc<AppState>,
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Recipients")]
impl BatchingApi {
    /// A category's batching policy
    ///
    /// `enabled: false` (and no `policy`) when its notifications are not
    /// batched.
    #[oai(
        path = "/categories/:category/batching",
        method = "get",
        operation_id = "getBatching"
    )]
    async fn get_batching(
        &self,
        category: Path<Text<CategoryRule>>,
    ) -> Result<BatchingResponse, ApiError> {
        let category = parse_category(category.0.as_str())?;
        let current = self.state.audience.batching_of(&category).await?;
        Ok(BatchingResponse::Ok(Json(BatchingView::of(
            &category,
            &current.state,
            current.position,
            None,
        ))))
    }

    /// Batch a category's notifications
    ///
    /// Its non-urgent notifications are held in batches (one per batch
    /// key) that flush by a `window` (fixed, or sliding up to
    /// `max_seconds`) or a `schedule` (daily or weekly at a local time of
    /// the recipient), or early at `max_items`, into one digest
    /// notification. Each change is a versioned `BatchingSet` event; a
    /// batch keeps the version it opened with, so a change never splits or
    /// drops an open batch.
    #[oai(
        path = "/categories/:category/batching",
        method = "put",
        operation_id = "setBatching"
    )]
    #[instrument(skip_all)]
    async fn set_batching(
        &self,
        ctx: Data<&RequestContext>,
        category: Path<Text<CategoryRule>>,
        body: StrictJson<PolicyBody>,
    ) -> Result<BatchingResponse, ApiError> {
        let category = parse_category(category.0.as_str())?;
        let policy = body.0.parse()?;
        // A template named must exist (its published version is read at
        // each flush, so it need not be published yet).
        if let Some(key) = &policy.template {
            let current = self
                .state
                .templates
                .commands
                .current(key.as_str(), None)
                .await?;
            if current.state.versions.is_empty() {
                return Err(ApiError::invalid(
                    "template",
                    format!("no template `{key}` exists; add a version with POST /v1/templates/{key}/versions"),
                ));
            }
        }
        self.run(&ctx, &category, |at| BatchingCommand::Set {
            policy: policy.clone(),
            at,
        })
        .await
    }

    /// Stop batching a category
    ///
    /// New notifications of the category are delivered one by one; batches
    /// already open flush as their policy says. A `BatchingTurnedOff`
    /// event; turning off what is off records nothing.
    #[oai(
        path = "/categories/:category/batching",
        method = "delete",
        operation_id = "turnOffBatching"
    )]
    #[instrument(skip_all)]
    async fn turn_off_batching(
        &self,
        ctx: Data<&RequestContext>,
        category: Path<Text<CategoryRule>>,
    ) -> Result<BatchingResponse, ApiError> {
        let category = parse_category(category.0.as_str())?;
        self.run(&ctx, &category, |at| BatchingCommand::TurnOff { at })
            .await
    }
}

/// A proposed policy and the past to replay it over.
#[derive(Object, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
#[oai(rename = "BatchingSimulation")]
pub struct SimulateBody {
    pub policy: PolicyBody,
    /// RFC 3339: the first creation time replayed (inclusive).
    pub from: String,
    /// RFC 3339: the end of the range (exclusive), at most 31 days after
    /// `from`.
    pub to: String,
}

/// Delays in milliseconds.
#[derive(Object, Debug)]
pub struct DelayView {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// What one recipient would have received.
#[derive(Object, Debug)]
pub struct RecipientOutcome {
    pub recipient: String,
    /// Notifications delivered on their own.
    pub notifications: u64,
    pub digests: u64,
    /// Notifications the digests carried.
    pub digested: u64,
}

#[derive(Object, Debug)]
#[oai(rename = "BatchingSimulationResult")]
pub struct SimulationView {
    pub category: String,
    pub from: String,
    pub to: String,
    pub policy: PolicyView,
    /// The past notifications of the category replayed.
    pub replayed: u64,
    /// Delivered on their own, over every recipient.
    pub notifications: u64,
    pub digests: u64,
    pub digested: u64,
    /// How long the policy would have held each notification (0 for those
    /// it would not have held).
    pub delay_ms: DelayView,
    /// Per recipient, by user id (the first 1,000).
    pub recipients: Vec<RecipientOutcome>,
    /// Recipients in all.
    pub recipient_count: u64,
    /// Log events read to find them.
    pub scanned: u64,
    /// True when the read stopped at `--events-scan-max`-like bound of
    /// `SIMULATION_SCAN_MAX` events before reaching `to`: the figures cover
    /// only what was read.
    pub truncated: bool,
}

#[derive(ApiResponse)]
pub enum SimulationResponse {
    #[oai(status = 200)]
    Ok(Json<SimulationView>),
}

/// The most log events a simulation reads.
pub const SIMULATION_SCAN_MAX: u64 = 2_000_000;
/// The longest range a simulation replays.
const SIMULATION_MAX_DAYS: i64 = 31;
/// The most recipients a simulation lists.
const SIMULATION_RECIPIENTS_MAX: usize = 1000;

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Recipients")]
impl BatchingSimulationApi {
    /// What a batching policy would have done
    ///
    /// Replays the category's notifications created in `[from, to)`
    /// through the proposed `policy` (the same batch rules as live: keys,
    /// windows or schedules in each recipient's time zone, `max_items`,
    /// `min_items`, `first_item_immediately`, urgent never held), without
    /// side effects, and answers how many notifications and digests each
    /// recipient would have received and how long the policy would have
    /// held them. Digests that tidings made are not replayed. Reads the
    /// log from its start up to `to` (at most 2,000,000 events: `truncated`
    /// says when it stopped short).
    #[oai(
        path = "/categories/:category/batching/simulate",
        method = "post",
        operation_id = "simulateBatching"
    )]
    #[instrument(skip_all)]
    async fn simulate(
        &self,
        category: Path<Text<CategoryRule>>,
        body: StrictJson<SimulateBody>,
    ) -> Result<SimulationResponse, ApiError> {
        let category = parse_category(category.0.as_str())?;
        let body = body.0;
        let time = |field: &str, raw: &str| {
            chrono::DateTime::parse_from_rfc3339(raw)
                .map(|t| t.to_utc())
                .map_err(|e| {
                    ApiError::invalid(field, format!("`{raw}` is not an RFC 3339 time: {e}"))
                })
        };
        let (from, to) = (time("from", &body.from)?, time("to", &body.to)?);
        if to <= from || to - from > chrono::Duration::days(SIMULATION_MAX_DAYS) {
            return Err(ApiError::invalid(
                "to",
                format!("must be after `from` and at most {SIMULATION_MAX_DAYS} days after it"),
            ));
        }
        let policy = body.policy.parse_in("policy.")?;
        let (past, scanned, truncated) = self.past(&category, from, to).await?;
        let outcome = crate::domain::simulation::simulate(&policy, 0, &past);
        let mut delays =
            hdrhistogram::Histogram::<u64>::new(3).map_err(|e| ApiError::internal(&e))?;
        for d in &outcome.delays_ms {
            delays.saturating_record(*d);
        }
        let q = |q: f64| {
            if delays.is_empty() {
                0
            } else {
                delays.value_at_quantile(q)
            }
        };
        let totals = outcome.recipients.values().fold((0, 0, 0), |(n, d, i), r| {
            (n + r.notifications, d + r.digests, i + r.digested)
        });
        Ok(SimulationResponse::Ok(Json(SimulationView {
            category: category.as_str().to_owned(),
            from: rfc3339(from),
            to: rfc3339(to),
            policy: PolicyView::of(&policy),
            replayed: past.len() as u64,
            notifications: totals.0,
            digests: totals.1,
            digested: totals.2,
            delay_ms: DelayView {
                p50: q(0.5),
                p99: q(0.99),
                max: if delays.is_empty() { 0 } else { delays.max() },
            },
            recipient_count: outcome.recipients.len() as u64,
            recipients: outcome
                .recipients
                .iter()
                .take(SIMULATION_RECIPIENTS_MAX)
                .map(|(user, r)| RecipientOutcome {
                    recipient: user.as_str().to_owned(),
                    notifications: r.notifications,
                    digests: r.digests,
                    digested: r.digested,
                })
                .collect(),
            scanned,
            truncated,
        })))
    }
}

pub struct BatchingSimulationApi {
    pub state: Arc<AppState>,
}

impl BatchingSimulationApi {
    /// The category's notifications created in `[from, to)` (digests
    /// excepted), with their recipients' time zones; the events read; and
    /// whether the read stopped at the bound first.
    async fn past(
        &self,
        category: &Category,
        from: crate::domain::Timestamp,
        to: crate::domain::Timestamp,
    ) -> Result<(Vec<Past>, u64, bool), ApiError> {
        use crate::domain::NotificationEvent as E;
        let mut past = Vec::new();
        let mut after = Position::START;
        let mut scanned = 0u64;
        // The log is in commit order: a little past `to` in recorded time,
        // nothing older can follow.
        let beyond = to + chrono::Duration::minutes(1);
        let truncated = loop {
            let page = self.state.log.read_after(after, 1000).await?;
            let Some(last) = page.last() else {
                break false;
            };
            after = last.position;
            scanned += page.len() as u64;
            let mut done = false;
            for event in &page {
                if event.recorded_at > beyond {
                    done = true;
                    break;
                }
                if event.aggregate_type != "Notification"
                    || event.event_type != "NotificationCreated"
                {
                    continue;
                }
                let made_by_digests = event.metadata[crate::commands::metadata::COMMAND_ID]
                    .as_str()
                    .is_some_and(|c| c.starts_with("digests/"));
                let Ok(created) = event.decode::<E>() else {
                    continue;
                };
                // The create folded as the aggregate folds it: its content
                // as recorded.
                let mut folded = crate::domain::Notification::default();
                folded.apply(created);
                let (Some(id), Some(content), Some(created_at)) =
                    (folded.id, folded.content, folded.created_at)
                else {
                    continue;
                };
                if made_by_digests
                    || &content.category != category
                    || created_at < from
                    || created_at >= to
                {
                    continue;
                }
                past.push(Past {
                    id,
                    content,
                    created_at,
                    time_zone: TimeZone::UTC,
                });
            }
            if done {
                break false;
            }
            if scanned >= SIMULATION_SCAN_MAX {
                break true;
            }
        };
        past.sort_by_key(|p| p.created_at);
        // Each recipient's time zone, for a schedule: a few reads a page.
        let mut users: Vec<UserId> = past.iter().map(|p| p.content.recipient.clone()).collect();
        users.sort();
        users.dedup();
        let mut zones = std::collections::HashMap::new();
        for chunk in users.chunks(500) {
            let read = self.state.audience.for_many(chunk, category, None).await?;
            for (user, audience) in chunk.iter().zip(read) {
                let zone = audience
                    .and_then(|a| a.profile.map(|(p, _)| p.time_zone()))
                    .unwrap_or(TimeZone::UTC);
                zones.insert(user.clone(), zone);
            }
        }
        for p in &mut past {
            if let Some(zone) = zones.get(&p.content.recipient) {
                p.time_zone = *zone;
            }
        }
        Ok((past, scanned, truncated))
    }
}

impl BatchingApi {
    async fn run(
        &self,
        ctx: &RequestContext,
        category: &Category,
        command: impl Fn(crate::domain::Timestamp) -> BatchingCommand,
    ) -> Result<BatchingResponse, ApiError> {
        let decided = self
            .state
            .audience
            .batching
            .execute(category.as_str(), command, &metadata(ctx), false)
            .await?;
        Ok(BatchingResponse::Ok(Json(BatchingView::of(
            category,
            &decided.state,
            decided.position,
            Some(decided.changed),
        ))))
    }
}
