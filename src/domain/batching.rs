//! A category's batching policy (an admin's): how its notifications are
//! held and summarised into digests. A window (`fixed`: N seconds from the
//! first item; `sliding`: each item extends it, up to a maximum) or a
//! schedule (daily or weekly at a time of day in the recipient's zone);
//! `max_items` flushes early; the batch key (default: recipient and group
//! key) is a template over the notification's fields; the first item may
//! go at once; below `min_items` the items are delivered one by one
//! instead of as a digest.
//!
//! One stream per category. Policies are versioned: a batch keeps the
//! version it opened with, so a change never splits or drops an open one.

use std::fmt;

use serde::{Deserialize, Serialize};

use chrono::{Datelike as _, Days, Duration};

use super::contact::TimeZone;
use super::local_time::{first_instant, LocalTime};
use super::superseding::Superseding;
use super::values::InvalidValue;
use super::{NewNotification, Timestamp};

pub const BATCHING_EVENT_VERSION: &str = "1.0";

/// The longest window, and the longest a sliding window may be extended to.
pub const WINDOW_MAX_SECONDS: u32 = 7 * 24 * 3600;
pub const MAX_ITEMS_MIN: u32 = 2;
pub const MAX_ITEMS_MAX: u32 = 1000;
/// The longest key template.
pub const KEY_MAX_CHARS: usize = 200;

/// When a batch closes by time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Window {
    /// `seconds` after its first item.
    Fixed { seconds: u32 },
    /// `seconds` after its latest item, and no later than `max_seconds`
    /// after its first.
    Sliding { seconds: u32, max_seconds: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Every {
    Day,
    Week,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    pub const ALL: [Self; 7] = [
        Self::Mon,
        Self::Tue,
        Self::Wed,
        Self::Thu,
        Self::Fri,
        Self::Sat,
        Self::Sun,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mon => "mon",
            Self::Tue => "tue",
            Self::Wed => "wed",
            Self::Thu => "thu",
            Self::Fri => "fri",
            Self::Sat => "sat",
            Self::Sun => "sun",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }

    pub fn chrono(self) -> chrono::Weekday {
        match self {
            Self::Mon => chrono::Weekday::Mon,
            Self::Tue => chrono::Weekday::Tue,
            Self::Wed => chrono::Weekday::Wed,
            Self::Thu => chrono::Weekday::Thu,
            Self::Fri => chrono::Weekday::Fri,
            Self::Sat => chrono::Weekday::Sat,
            Self::Sun => chrono::Weekday::Sun,
        }
    }
}

/// A batch that closes at a time of day in the recipient's time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub every: Every,
    pub at: LocalTime,
    /// For `week` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekday: Option<Weekday>,
}

impl Schedule {
    /// Its first time strictly after `after`, in `zone`: on a day whose
    /// clocks skip it (a DST gap), when the clocks land; on one that repeats
    /// it, its first occurrence.
    pub fn next_after(&self, after: Timestamp, zone: TimeZone) -> Timestamp {
        let today = after.with_timezone(&zone.tz()).date_naive();
        // A week and a day covers every weekday, whatever the offset.
        for offset in 0..=8 {
            let Some(day) = today.checked_add_days(Days::new(offset)) else {
                break;
            };
            if let (Every::Week, Some(weekday)) = (self.every, self.weekday) {
                if day.weekday() != weekday.chrono() {
                    continue;
                }
            }
            if let Some(t) = first_instant(zone, day, self.at.time()) {
                if t > after {
                    return t;
                }
            }
        }
        // Not reached with the tz database: a week on, rather than never.
        after + Duration::days(7)
    }
}

/// How a batch closes by time: a window or a schedule, never both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cadence {
    Window(Window),
    Schedule(Schedule),
}

/// What the batch key is made from: a template over the notification's
/// fields (`recipient`, `category`, `group_key`, `tenant`, `data`), kept
/// as written. Checked when set; rendered when an item is added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyTemplate(String);

impl KeyTemplate {
    /// The key when none is set: the recipient and the group key.
    pub const DEFAULT: &'static str = "{{ recipient }}/{{ group_key }}";

    /// A template whose syntax `check` accepts (the template engine's).
    pub fn parse(
        s: &str,
        check: impl FnOnce(&str) -> Result<(), String>,
    ) -> Result<Self, InvalidValue> {
        if s.trim().is_empty() {
            return Err(InvalidValue(
                "is empty; leave `key` out for the default (recipient and group key)".into(),
            ));
        }
        if s.chars().count() > KEY_MAX_CHARS {
            return Err(InvalidValue(format!(
                "is longer than {KEY_MAX_CHARS} characters"
            )));
        }
        check(s).map_err(|e| InvalidValue(format!("is not a template: {e}")))?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for KeyTemplate {
    type Error = InvalidValue;
    /// As stored: checked when it was set.
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        Self::parse(&s, |_| Ok(()))
    }
}

impl From<KeyTemplate> for String {
    fn from(k: KeyTemplate) -> Self {
        k.0
    }
}

impl fmt::Display for KeyTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A category's batching policy, valid by construction (`BatchPolicy::new`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchPolicy {
    pub cadence: Cadence,
    /// A batch that reaches this many items flushes at once.
    pub max_items: u32,
    /// None: the recipient and the group key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyTemplate>,
    /// The first item of a batch is delivered at once; the rest wait.
    #[serde(default)]
    pub first_item_immediately: bool,
    /// A batch that flushes with fewer items than this delivers them one by
    /// one instead of as a digest (1: always a digest).
    pub min_items: u32,
    /// The template a digest's title and body render from (its published
    /// version at the flush); None: the built-in summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<super::template::TemplateKey>,
}

/// What is wrong with a proposed policy: the field (as the request names
/// it) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    pub field: &'static str,
    pub message: String,
}

impl BatchPolicy {
    /// A policy, or every problem with it.
    pub fn new(
        cadence: Cadence,
        max_items: u32,
        key: Option<KeyTemplate>,
        first_item_immediately: bool,
        min_items: Option<u32>,
    ) -> Result<Self, Vec<PolicyProblem>> {
        let mut problems = Vec::new();
        let mut problem =
            |field: &'static str, message: String| problems.push(PolicyProblem { field, message });
        match &cadence {
            Cadence::Window(Window::Fixed { seconds }) => {
                if !(1..=WINDOW_MAX_SECONDS).contains(seconds) {
                    problem(
                        "window.seconds",
                        format!("is {seconds}; a window is 1 to {WINDOW_MAX_SECONDS} seconds"),
                    );
                }
            }
            Cadence::Window(Window::Sliding {
                seconds,
                max_seconds,
            }) => {
                if !(1..=WINDOW_MAX_SECONDS).contains(seconds) {
                    problem(
                        "window.seconds",
                        format!("is {seconds}; a window is 1 to {WINDOW_MAX_SECONDS} seconds"),
                    );
                }
                if max_seconds < seconds || *max_seconds > WINDOW_MAX_SECONDS {
                    problem(
                        "window.max_seconds",
                        format!(
                            "is {max_seconds}; a sliding window's bound is at least its \
                             `seconds` and at most {WINDOW_MAX_SECONDS}"
                        ),
                    );
                }
            }
            Cadence::Schedule(Schedule { every, weekday, .. }) => match (every, weekday) {
                (Every::Week, None) => problem(
                    "schedule.weekday",
                    "is missing; a weekly schedule names its day (`mon` .. `sun`)".into(),
                ),
                (Every::Day, Some(_)) => problem(
                    "schedule.weekday",
                    "is only for `every: week`; leave it out of a daily schedule".into(),
                ),
                _ => {}
            },
        }
        if !(MAX_ITEMS_MIN..=MAX_ITEMS_MAX).contains(&max_items) {
            problem(
                "max_items",
                format!("is {max_items}; it is {MAX_ITEMS_MIN} to {MAX_ITEMS_MAX}"),
            );
        }
        let min_items = min_items.unwrap_or(1);
        if min_items < 1 || min_items > max_items {
            problem(
                "min_items",
                format!("is {min_items}; it is 1 to `max_items` ({max_items})"),
            );
        }
        if problems.is_empty() {
            Ok(Self {
                cadence,
                max_items,
                key,
                first_item_immediately,
                min_items,
                template: None,
            })
        } else {
            Err(problems)
        }
    }

    /// The policy with its digests rendered from template `template`.
    pub fn with_template(mut self, template: Option<super::template::TemplateKey>) -> Self {
        self.template = template;
        self
    }

    /// When a batch flushes by time: opened at `first`, its latest item at
    /// `latest`, for a recipient in `zone` (a schedule's times are the
    /// recipient's). `max_items` may flush it sooner; that is the batch's
    /// to say.
    pub fn flush_at(&self, first: Timestamp, latest: Timestamp, zone: TimeZone) -> Timestamp {
        let secs = |s: u32| Duration::seconds(i64::from(s));
        match &self.cadence {
            Cadence::Window(Window::Fixed { seconds }) => first + secs(*seconds),
            Cadence::Window(Window::Sliding {
                seconds,
                max_seconds,
            }) => (latest.max(first) + secs(*seconds)).min(first + secs(*max_seconds)),
            Cadence::Schedule(schedule) => schedule.next_after(first, zone),
        }
    }

    /// The batch key of `content`: the key template rendered over its
    /// fields (`recipient`, `category`, `group_key` and `tenant`, empty
    /// when absent, and `data`), or why not: a field the template names
    /// that the notification lacks is named, and a key longer than
    /// `KEY_MAX_CHARS` is refused.
    pub fn key_for(&self, content: &NewNotification) -> Result<String, String> {
        let context = serde_json::json!({
            "recipient": content.recipient.as_str(),
            "category": content.category.as_str(),
            "group_key": content.group_key.as_ref().map_or("", |g| g.as_str()),
            "tenant": content.tenant.as_ref().map_or("", |t| t.as_str()),
            "data": content.data,
        });
        let key = crate::render::render(self.key_template(), &context)?;
        if key.chars().count() > KEY_MAX_CHARS {
            return Err(format!(
                "the batch key renders to more than {KEY_MAX_CHARS} characters"
            ));
        }
        Ok(key)
    }

    /// The key template in force (the default when none is set).
    pub fn key_template(&self) -> &str {
        self.key
            .as_ref()
            .map_or(KeyTemplate::DEFAULT, |k| k.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchingCommand {
    Set { policy: BatchPolicy, at: Timestamp },
    TurnOff { at: Timestamp },
}

impl BatchingCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Set { .. } => "SetBatching",
            Self::TurnOff { .. } => "TurnOffBatching",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchingEvent {
    /// The policy in force from now on, and which change it is (from 1).
    BatchingSet {
        policy: BatchPolicy,
        version: u64,
        set_at: Timestamp,
    },
    /// No batching from now on (open batches flush as they would).
    BatchingTurnedOff {
        version: u64,
        turned_off_at: Timestamp,
    },
}

impl BatchingEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::BatchingSet { .. } => "BatchingSet",
            Self::BatchingTurnedOff { .. } => "BatchingTurnedOff",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchingError {}

/// A category's batching as its events leave it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batching {
    /// None: off (never set, or turned off).
    pub policy: Option<BatchPolicy>,
    /// How many changes it has had (0: never set).
    pub version: u64,
    pub changed_at: Option<Timestamp>,
}

impl Batching {
    pub fn decide(&self, command: BatchingCommand) -> Result<Vec<BatchingEvent>, BatchingError> {
        let version = self.version + 1;
        // Never before the last change, whatever the clocks say.
        let at = |at: Timestamp| self.changed_at.map_or(at, |last| at.max(last));
        Ok(match command {
            BatchingCommand::Set { policy, .. } if self.policy.as_ref() == Some(&policy) => vec![],
            BatchingCommand::Set { policy, at: now } => vec![BatchingEvent::BatchingSet {
                policy,
                version,
                set_at: at(now),
            }],
            BatchingCommand::TurnOff { .. } if self.policy.is_none() => vec![],
            BatchingCommand::TurnOff { at: now } => vec![BatchingEvent::BatchingTurnedOff {
                version,
                turned_off_at: at(now),
            }],
        })
    }

    pub fn apply(&mut self, event: BatchingEvent) {
        match event {
            BatchingEvent::BatchingSet {
                policy,
                version,
                set_at,
            } => {
                self.policy = Some(policy);
                self.version = version;
                self.changed_at = Some(set_at);
            }
            BatchingEvent::BatchingTurnedOff {
                version,
                turned_off_at,
            } => {
                self.policy = None;
                self.version = version;
                self.changed_at = Some(turned_off_at);
            }
        }
    }
}

/// Each event sets the whole state: the last one of either type decides
/// (applied in order, the later one wins), numbered from the first release.
impl Superseding for Batching {
    type Event = BatchingEvent;
    const EVENT_TYPES: &'static [&'static str] = &["BatchingSet", "BatchingTurnedOff"];
    fn numbered(_: &BatchingEvent) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone as _, Utc};

    fn at(secs: i64) -> Timestamp {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn fixed(seconds: u32) -> Cadence {
        Cadence::Window(Window::Fixed { seconds })
    }

    fn fields(problems: Vec<PolicyProblem>) -> Vec<&'static str> {
        problems.into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn a_policy_names_every_field_that_is_out_of_bounds() {
        assert!(BatchPolicy::new(fixed(60), 10, None, false, None).is_ok());
        assert_eq!(
            fields(BatchPolicy::new(fixed(0), 1, None, false, Some(5)).unwrap_err()),
            ["window.seconds", "max_items", "min_items"]
        );
        let sliding = Cadence::Window(Window::Sliding {
            seconds: 60,
            max_seconds: 30,
        });
        assert_eq!(
            fields(BatchPolicy::new(sliding, 1001, None, false, Some(0)).unwrap_err()),
            ["window.max_seconds", "max_items", "min_items"]
        );
        let weekly = |weekday| {
            Cadence::Schedule(Schedule {
                every: Every::Week,
                at: LocalTime::parse("09:00").unwrap(),
                weekday,
            })
        };
        assert_eq!(
            fields(BatchPolicy::new(weekly(None), 10, None, false, None).unwrap_err()),
            ["schedule.weekday"]
        );
        assert!(BatchPolicy::new(weekly(Some(Weekday::Mon)), 10, None, false, None).is_ok());
        assert_eq!(
            BatchPolicy::new(fixed(60), 10, None, false, None)
                .unwrap()
                .min_items,
            1,
            "always a digest unless said otherwise"
        );
    }

    #[test]
    fn each_change_is_numbered_and_setting_the_same_policy_records_nothing() {
        let policy = BatchPolicy::new(fixed(60), 10, None, false, None).unwrap();
        let mut b = Batching::default();
        for command in [
            BatchingCommand::Set {
                policy: policy.clone(),
                at: at(0),
            },
            BatchingCommand::TurnOff { at: at(1) },
            BatchingCommand::Set {
                policy: policy.clone(),
                at: at(2),
            },
        ] {
            for event in b.decide(command).unwrap() {
                b.apply(event);
            }
        }
        assert_eq!((b.version, b.policy.as_ref()), (3, Some(&policy)));
        let again = BatchingCommand::Set { policy, at: at(3) };
        assert_eq!(b.decide(again).unwrap(), vec![]);
        let off = Batching::default().decide(BatchingCommand::TurnOff { at: at(0) });
        assert_eq!(off.unwrap(), vec![], "off already");
    }

    fn utc(s: &str) -> Timestamp {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn zone(name: &str) -> TimeZone {
        TimeZone::parse(name).unwrap()
    }

    fn schedule(every: Every, at: &str, weekday: Option<Weekday>) -> BatchPolicy {
        let cadence = Cadence::Schedule(Schedule {
            every,
            at: LocalTime::parse(at).unwrap(),
            weekday,
        });
        BatchPolicy::new(cadence, 10, None, false, None).unwrap()
    }

    #[test]
    fn a_window_flushes_after_its_first_item_or_slides_up_to_its_bound() {
        let first = utc("2026-12-03T10:00:00Z");
        let fixed = BatchPolicy::new(fixed(60), 10, None, false, None).unwrap();
        assert_eq!(
            fixed.flush_at(first, first + Duration::seconds(50), TimeZone::UTC),
            utc("2026-12-03T10:01:00Z"),
            "a later item does not move a fixed window"
        );
        let sliding = BatchPolicy::new(
            Cadence::Window(Window::Sliding {
                seconds: 60,
                max_seconds: 300,
            }),
            10,
            None,
            false,
            None,
        )
        .unwrap();
        for (latest, flush) in [
            ("2026-12-03T10:00:00Z", "2026-12-03T10:01:00Z"),
            ("2026-12-03T10:02:30Z", "2026-12-03T10:03:30Z"),
            ("2026-12-03T10:04:30Z", "2026-12-03T10:05:00Z"),
        ] {
            assert_eq!(
                sliding.flush_at(first, utc(latest), TimeZone::UTC),
                utc(flush),
                "latest item at {latest}"
            );
        }
    }

    #[test]
    fn a_schedule_flushes_at_the_recipients_local_time_across_dst_changes_and_zones() {
        let daily = |at| schedule(Every::Day, at, None);
        let cases = [
            // given a batch opened at, in zone, with a schedule: then it flushes at
            (
                "2026-03-28T10:00:00Z",
                "Europe/Berlin",
                daily("09:00"),
                "2026-03-29T07:00:00Z",
            ),
            (
                "2026-03-28T12:00:00Z",
                "Europe/Berlin",
                daily("02:30"),
                "2026-03-29T01:00:00Z",
            ),
            (
                "2026-10-24T12:00:00Z",
                "Europe/Berlin",
                daily("02:30"),
                "2026-10-25T00:30:00Z",
            ),
            (
                "2026-12-03T08:00:00Z",
                "Europe/Berlin",
                daily("09:00"),
                "2026-12-04T08:00:00Z",
            ),
            (
                "2026-12-03T07:59:59Z",
                "Europe/Berlin",
                daily("09:00"),
                "2026-12-03T08:00:00Z",
            ),
            (
                "2026-12-03T02:00:00Z",
                "Asia/Kolkata",
                daily("09:00"),
                "2026-12-03T03:30:00Z",
            ),
            (
                "2026-12-03T23:30:00Z",
                "Pacific/Auckland",
                daily("09:00"),
                "2026-12-04T20:00:00Z",
            ),
            (
                "2026-11-06T15:00:00Z",
                "America/New_York",
                schedule(Every::Week, "09:00", Some(Weekday::Mon)),
                "2026-11-09T14:00:00Z",
            ),
            (
                "2026-10-30T15:00:00Z",
                "America/New_York",
                schedule(Every::Week, "09:00", Some(Weekday::Mon)),
                "2026-11-02T14:00:00Z",
            ),
            (
                "2026-10-23T15:00:00Z",
                "America/New_York",
                schedule(Every::Week, "09:00", Some(Weekday::Mon)),
                "2026-10-26T13:00:00Z",
            ),
        ];
        for (opened, tz, policy, flush) in cases {
            let opened = utc(opened);
            assert_eq!(
                policy.flush_at(opened, opened, zone(tz)),
                utc(flush),
                "opened {opened} in {tz}"
            );
        }
    }

    #[test]
    fn in_every_zone_a_schedule_flushes_after_the_batch_opens_and_within_a_week_and_a_day() {
        let weekly = schedule(Every::Week, "02:30", Some(Weekday::Sun));
        let daily = schedule(Every::Day, "00:00", None);
        for tz in chrono_tz::TZ_VARIANTS {
            let zone = TimeZone::parse(tz.name()).unwrap();
            for opened in [
                "2026-03-08T07:00:00Z",
                "2026-03-29T00:59:00Z",
                "2026-10-25T01:00:00Z",
            ] {
                let opened = utc(opened);
                for policy in [&weekly, &daily] {
                    let flush = policy.flush_at(opened, opened, zone);
                    assert!(
                        flush > opened && flush <= opened + Duration::days(8),
                        "{} opened {opened}: {flush}",
                        tz.name()
                    );
                }
            }
        }
    }

    fn comment(data: serde_json::Value, group_key: Option<&str>) -> NewNotification {
        use crate::domain::{Body, Category, Channel, GroupKey, Priority, Title, UserId};
        NewNotification {
            recipient: UserId::parse("ann").unwrap(),
            category: Category::parse("comments").unwrap(),
            title: Title::parse("New comment").unwrap(),
            body: Body::parse("b").unwrap(),
            data: data.as_object().cloned().unwrap_or_default(),
            priority: Priority::Normal,
            channels: vec![Channel::InApp],
            group_key: group_key.map(|g| GroupKey::parse(g).unwrap()),
            deliver_at: None,
            tenant: None,
            template: None,
            experiment: None,
        }
    }

    #[test]
    fn a_key_renders_over_the_notifications_fields_and_names_what_it_lacks() {
        let default = BatchPolicy::new(fixed(60), 10, None, false, None).unwrap();
        let post = serde_json::json!({"post": {"id": 42}});
        assert_eq!(
            default.key_for(&comment(post.clone(), Some("post-42"))),
            Ok("ann/post-42".into())
        );
        assert_eq!(
            default.key_for(&comment(post.clone(), None)),
            Ok("ann/".into())
        );
        let by_post = |template: &str| {
            let key = KeyTemplate::parse(template, crate::render::check_template).unwrap();
            BatchPolicy::new(fixed(60), 10, Some(key), false, None).unwrap()
        };
        assert_eq!(
            by_post("{{ recipient }}:{{ data.post.id }}").key_for(&comment(post.clone(), None)),
            Ok("ann:42".into())
        );
        assert_eq!(
            by_post("{{ data.thread }}").key_for(&comment(post, None)),
            Err("`data.thread` is undefined".into())
        );
        let long = serde_json::json!({"big": "x".repeat(KEY_MAX_CHARS + 1)});
        let err = by_post("{{ data.big }}")
            .key_for(&comment(long, None))
            .unwrap_err();
        assert!(err.contains("more than"), "{err}");
    }

    #[test]
    fn a_policy_reads_back_from_its_event_as_written() {
        let policy = BatchPolicy::new(
            Cadence::Schedule(Schedule {
                every: Every::Week,
                at: LocalTime::parse("09:00").unwrap(),
                weekday: Some(Weekday::Fri),
            }),
            50,
            Some(KeyTemplate::parse("{{ recipient }}", |_| Ok(())).unwrap()),
            true,
            Some(3),
        )
        .unwrap();
        let event = BatchingEvent::BatchingSet {
            policy,
            version: 1,
            set_at: at(0),
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json["BatchingSet"]["policy"]["cadence"]["schedule"]["weekday"],
            "fri"
        );
        assert_eq!(
            serde_json::from_value::<BatchingEvent>(json).unwrap(),
            event
        );
    }
}
