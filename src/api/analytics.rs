//! `/v1/analytics`: counts, rates and latency percentiles per bucket, and the
//! health score; and the task that pushes the score on the `analytics` topic.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::health::projection_lags;
use super::params::{BucketRule, CategoryRule, ChannelRule, LogCursorRule, Text, TimeRule};
use super::problem::ApiError;
use super::views::rfc3339;
use super::{wait_for, ApiTags};
use crate::domain::{Category, Channel, Timestamp};
use crate::projections::analytics::health::{self, Health};
use crate::projections::analytics::latency::{Latency, Percentiles};
use crate::projections::analytics::query::{self, Filter, Totals};
use crate::projections::analytics::{self, Counts, Granularity};
use crate::storage::StorageError;
use crate::streams::updates::{Announce, NewUpdate};
use crate::AppState;

/// The most buckets one request answers.
pub const MAX_BUCKETS: i64 = 1_440;

/// Buckets answered when `from` is absent.
const DEFAULT_BUCKETS: i64 = 24;

#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename = "AnalyticsCounts")]
pub struct CountsView {
    pub created: u64,
    pub delivered: u64,
    pub seen: u64,
    pub read: u64,
    pub clicked: u64,
    pub archived: u64,
    pub deleted: u64,
    pub cancelled: u64,
    /// Not delivered by decision: a preference, a category default, a
    /// missing address (never counted as failed).
    pub suppressed: u64,
    /// Held by quiet hours, delivered when they end.
    pub held: u64,
    /// Reported failed by a channel worker.
    pub failed: u64,
    /// Carried by a digest instead of delivered on their own.
    pub digested: u64,
}

impl From<&Counts> for CountsView {
    fn from(c: &Counts) -> Self {
        Self {
            created: c.created,
            delivered: c.delivered,
            seen: c.seen,
            read: c.read,
            clicked: c.clicked,
            archived: c.archived,
            deleted: c.deleted,
            cancelled: c.cancelled,
            suppressed: c.suppressed,
            held: c.held,
            failed: c.failed,
            digested: c.digested,
        }
    }
}

/// Ratios of the counts; null where the divisor is 0.
#[derive(Object, Debug, Clone, PartialEq)]
pub struct RatesView {
    /// delivered / (created − suppressed − digested).
    #[oai(nullable)]
    pub delivery: Option<f64>,
    /// seen / in-app deliveries.
    #[oai(nullable)]
    pub seen: Option<f64>,
    /// read / in-app deliveries.
    #[oai(nullable)]
    pub read: Option<f64>,
    /// clicked / in-app deliveries.
    #[oai(nullable)]
    pub click: Option<f64>,
}

/// Latency percentiles in milliseconds (3 significant digits); null when
/// nothing was measured.
#[derive(Object, Debug, Clone, PartialEq)]
pub struct LatencyView {
    pub count: u64,
    #[oai(nullable)]
    pub p50: Option<u64>,
    #[oai(nullable)]
    pub p90: Option<u64>,
    #[oai(nullable)]
    pub p99: Option<u64>,
    #[oai(nullable)]
    pub max: Option<u64>,
}

impl From<Percentiles> for LatencyView {
    fn from(p: Percentiles) -> Self {
        Self {
            count: p.count,
            p50: p.p50,
            p90: p.p90,
            p99: p.p99,
            max: p.max,
        }
    }
}

#[derive(Object, Debug, Clone, PartialEq)]
pub struct LatenciesView {
    /// Due (`deliver_at`, or creation) → delivered.
    pub delivery: LatencyView,
    /// In-app delivered → seen.
    pub seen: LatencyView,
    /// In-app delivered → read.
    pub read: LatencyView,
}

/// One bucket, or the whole range.
#[derive(Object, Debug, Clone, PartialEq)]
pub struct BucketView {
    /// RFC 3339 UTC: where the bucket (or range) starts, inclusive.
    pub start: String,
    /// RFC 3339 UTC: where it ends, exclusive.
    pub end: String,
    pub counts: CountsView,
    pub rates: RatesView,
    pub latency_ms: LatenciesView,
}

fn latency(l: &Latency) -> LatencyView {
    l.percentiles().into()
}

fn time(ms: i64) -> String {
    rfc3339(Timestamp::from_timestamp_millis(ms).unwrap_or_default())
}

impl BucketView {
    fn of(start: i64, end: i64, t: &Totals) -> Self {
        let r = t.rates();
        Self {
            start: time(start),
            end: time(end),
            counts: (&t.counts).into(),
            rates: RatesView {
                delivery: r.delivery,
                seen: r.seen,
                read: r.read,
                click: r.click,
            },
            latency_ms: LatenciesView {
                delivery: latency(&t.delivery),
                seen: latency(&t.seen),
                read: latency(&t.read),
            },
        }
    }
}

#[derive(Object, Debug, Clone, PartialEq)]
pub struct AnalyticsView {
    /// `minute`, `hour` or `day` (UTC).
    pub bucket: Text<BucketRule>,
    #[oai(nullable)]
    pub category: Option<String>,
    #[oai(nullable)]
    pub channel: Option<Text<ChannelRule>>,
    #[oai(nullable)]
    pub tenant: Option<String>,
    /// Every bucket from the one holding `from` to the last starting before
    /// `to`, oldest first, empty ones included.
    pub buckets: Vec<BucketView>,
    /// All of them merged.
    pub total: BucketView,
}

#[derive(Object, serde::Serialize, Debug, Clone, PartialEq)]
#[oai(rename = "HealthComponent")]
pub struct ComponentView {
    /// `delivery_rate`, `engagement_rate`, `delivery_latency_p99_ms`,
    /// `projection_lag_ms` or `dependencies`.
    pub name: String,
    /// Null when the window has no data for it (it then scores full).
    #[oai(nullable)]
    pub value: Option<f64>,
    pub target: f64,
    pub weight: f64,
    /// Score points it gives: 100 × weight × its score (0–1) / sum of weights.
    pub contribution: f64,
}

/// As REST answers it, and as the `analytics` topic's `health` updates carry it.
#[derive(Object, serde::Serialize, Debug, Clone, PartialEq)]
#[oai(rename = "HealthScore")]
pub struct HealthScoreView {
    /// 0–100: the sum of the contributions, rounded.
    pub score: u32,
    pub components: Vec<ComponentView>,
    /// The analytics window scored, in minutes (`--health-window-minutes`).
    pub window_minutes: u64,
    /// RFC 3339 UTC: when it was computed.
    pub as_of: String,
}

impl HealthScoreView {
    fn of(h: &Health, window: Duration) -> Self {
        Self {
            score: h.score,
            components: h
                .components
                .iter()
                .map(|c| ComponentView {
                    name: c.name.to_owned(),
                    value: c.value,
                    target: c.target,
                    weight: c.weight,
                    contribution: c.contribution,
                })
                .collect(),
            window_minutes: window.as_secs() / 60,
            as_of: rfc3339(Utc::now()),
        }
    }
}

#[derive(ApiResponse)]
pub enum AnalyticsResponse {
    #[oai(status = 200)]
    Ok(Json<AnalyticsView>),
}

#[derive(ApiResponse)]
pub enum HealthScoreResponse {
    #[oai(status = 200)]
    Ok(Json<HealthScoreView>),
}

pub struct AnalyticsApi {
    pub state: Arc<AppState>,
}

fn parse_time(field: &str, raw: Option<&Text<TimeRule>>) -> Result<Option<i64>, ApiError> {
    raw.map(|t| {
        chrono::DateTime::parse_from_rfc3339(t.as_str())
            .map(|t| t.timestamp_millis())
            .map_err(|_| {
                ApiError::invalid(
                    field,
                    format!(
                        "`{}` is not an RFC 3339 time (2026-11-22T08:00:00Z)",
                        t.as_str()
                    ),
                )
            })
    })
    .transpose()
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Analytics")]
impl AnalyticsApi {
    /// Analytics per time bucket
    ///
    /// Per UTC minute, hour or day: how many notifications were created,
    /// delivered, seen, read, clicked, archived, deleted and cancelled, the
    /// rates, and latency percentiles merged from the buckets' histograms;
    /// narrowed to one category, channel and/or tenant. Created, cancelled
    /// and deleted count under each channel of a notification, delivered
    /// under the channel delivered, seen/read/clicked/archived under `in_app`
    /// (once per notification), suppressed, held and failed under theirs.
    /// At most 1,440 buckets per request.
    #[oai(path = "/analytics", method = "get", operation_id = "getAnalytics")]
    #[allow(clippy::too_many_arguments)]
    async fn analytics(
        &self,
        /// RFC 3339: the bucket holding it is the first (default: 24 buckets before `to`).
        from: Query<Option<Text<TimeRule>>>,
        /// RFC 3339, exclusive (default: now).
        to: Query<Option<Text<TimeRule>>>,
        /// `minute`, `hour` (default) or `day`.
        bucket: Query<Option<Text<BucketRule>>>,
        /// Only this category.
        category: Query<Option<Text<CategoryRule>>>,
        /// Only this channel.
        channel: Query<Option<Text<ChannelRule>>>,
        /// Only the notifications sent for this tenant.
        tenant: Query<Option<Text<super::params::TenantRule>>>,
        /// A command's `cursor`: answer only once analytics includes that command.
        min_position: Query<Option<Text<LogCursorRule>>>,
    ) -> Result<AnalyticsResponse, ApiError> {
        let g = match bucket.0.as_ref().map(Text::as_str) {
            None => Granularity::Hour,
            Some(raw) => Granularity::parse(raw).ok_or_else(|| {
                ApiError::invalid(
                    "query.bucket",
                    format!("`{raw}` is not a bucket; use minute, hour or day"),
                )
            })?,
        };
        let filter = Filter {
            category: category
                .0
                .as_ref()
                .map(|c| Category::parse(c.as_str()))
                .transpose()
                .map_err(|e| ApiError::invalid("query.category", e.0))?,
            channel: channel
                .0
                .as_ref()
                .map(|c| Channel::parse(c.as_str()))
                .transpose()
                .map_err(|e| ApiError::invalid("query.channel", e.0))?,
            tenant: tenant
                .0
                .as_ref()
                .map(|t| crate::domain::contact::TenantId::parse(t.as_str()))
                .transpose()
                .map_err(|e| ApiError::invalid("query.tenant", e.0))?,
        };
        let width = g.millis();
        let to = parse_time("query.to", to.0.as_ref())?
            .unwrap_or_else(|| Utc::now().timestamp_millis() + 1);
        let from = parse_time("query.from", from.0.as_ref())?
            .unwrap_or_else(|| g.start_of(to - 1) - (DEFAULT_BUCKETS - 1) * width);
        if from >= to {
            return Err(ApiError::invalid(
                "query.from",
                "`from` must be before `to`".to_owned(),
            ));
        }
        let first = g.start_of(from);
        let count = (to - first + width - 1) / width;
        if count > MAX_BUCKETS {
            return Err(ApiError::invalid(
                "query.from",
                format!(
                    "the range holds {count} {} buckets, more than {MAX_BUCKETS}; \
                     narrow it or use a wider bucket",
                    g.as_str()
                ),
            ));
        }
        let running = self
            .state
            .projections
            .get(analytics::NAME)
            .map_err(|e| ApiError::internal(&e))?;
        wait_for(
            &self.state,
            &running.projector,
            min_position.0.as_ref().map(Text::as_str),
        )
        .await?;
        let found = query::buckets(&*self.state.analytics, g, from, to, &filter).await?;
        let mut found = found.into_iter().peekable();
        let mut buckets = Vec::with_capacity(count as usize);
        let mut total = Totals::default();
        for i in 0..count {
            let start = first + i * width;
            while found.peek().is_some_and(|(s, _)| *s < start) {
                found.next();
            }
            let totals = match found.peek() {
                Some((s, _)) if *s == start => found.next().map(|(_, t)| t).unwrap_or_default(),
                _ => Totals::default(),
            };
            total.merge(&totals);
            buckets.push(BucketView::of(start, start + width, &totals));
        }
        Ok(AnalyticsResponse::Ok(Json(AnalyticsView {
            bucket: Text::new(g.as_str()),
            category: filter.category.map(|c| c.as_str().to_owned()),
            channel: filter.channel.map(|c| Text::new(c.as_str())),
            tenant: filter.tenant.map(|t| t.to_string()),
            total: BucketView::of(first, first + count * width, &total),
            buckets,
        })))
    }

    /// Health score
    ///
    /// A score from 0 to 100 over the last `--health-window-minutes` of
    /// analytics, with its components: delivery rate, engagement rate (read
    /// over in-app deliveries), p99 delivery latency, projection lag and
    /// dependency state, each with its value, target, weight and
    /// contribution. Targets and weights are settings; the formula is in the
    /// README. The `analytics` stream topic pushes it as it changes.
    #[oai(
        path = "/analytics/health",
        method = "get",
        operation_id = "getHealthScore"
    )]
    async fn health(&self) -> Result<HealthScoreResponse, ApiError> {
        // Always a score (an unreachable store is a component of it); the
        // errors are the middleware's (overload, timeout).
        let h = health_score(&self.state).await;
        Ok(HealthScoreResponse::Ok(Json(HealthScoreView::of(
            &h,
            self.state.health.window,
        ))))
    }
}

/// The health score's settings.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    pub targets: health::Targets,
    pub window: Duration,
}

/// The health score now. While the event store does not answer, what it
/// would tell (the window, the lag) counts as unknown.
pub async fn health_score(state: &AppState) -> Health {
    let store_up = state.commands.ping().await.is_ok();
    let (window, lag_ms) = if store_up {
        (window(state).await.ok(), lag(state).await.ok())
    } else {
        (None, None)
    };
    let redis_up = state.streams.fanout.as_ref().map(|f| f.is_up());
    let inputs = health::Inputs {
        window,
        lag_ms,
        dependencies_up: u32::from(store_up) + u32::from(redis_up == Some(true)),
        dependencies: 1 + u32::from(redis_up.is_some()),
    };
    health::score(&state.health.targets, &inputs)
}

/// The analytics of the health window: the current minute and the whole
/// minutes before it.
async fn window(state: &AppState) -> Result<Totals, StorageError> {
    let now = Utc::now().timestamp_millis();
    let minutes = (state.health.window.as_secs() / 60).max(1) as i64;
    let from = Granularity::Minute.start_of(now) - (minutes - 1) * 60_000;
    let buckets = query::buckets(
        &*state.analytics,
        Granularity::Minute,
        from,
        now + 1,
        &Filter::default(),
    )
    .await?;
    let mut window = Totals::default();
    for (_, t) in &buckets {
        window.merge(t);
    }
    Ok(window)
}

/// The oldest unapplied event's age over every projection, ms.
async fn lag(state: &AppState) -> Result<u64, StorageError> {
    Ok(projection_lags(state)
        .await?
        .iter()
        .map(|l| l.oldest_unprocessed_age_ms)
        .max()
        .unwrap_or(0))
}

/// How often the instance that runs analytics recomputes the score.
pub const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Pushes the health score on the `analytics` topic whenever a contribution
/// changes, from the instance that runs the analytics projection (one
/// instance: subscribers get each change once).
pub fn spawn_health_announcer(
    state: Arc<AppState>,
    announce: Arc<dyn Announce>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<Health> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            let Ok(running) = state.projections.get(analytics::NAME) else {
                return;
            };
            if !running.projector.is_leader() {
                last = None;
                continue;
            }
            let h = health_score(&state).await;
            let same = last.as_ref().is_some_and(|l| {
                l.score == h.score
                    && l.components
                        .iter()
                        .zip(&h.components)
                        .all(|(a, b)| a.contribution == b.contribution)
            });
            if same {
                continue;
            }
            let view = HealthScoreView::of(&h, state.health.window);
            let Ok(data) = serde_json::to_string(&view) else {
                continue;
            };
            let update = NewUpdate {
                topic: analytics::TOPIC.to_owned(),
                kind: "health",
                data: data.into(),
                position: running.projector.checkpoint(),
            };
            match announce.announce(update).await {
                Ok(()) => last = Some(h),
                Err(e) => tracing::warn!(error = %e, "announcing the health score failed"),
            }
        }
    })
}
