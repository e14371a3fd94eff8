//! Times of day in a recipient's time zone: what quiet hours and batch
//! schedules are written in, and the instant a local time first happens
//! on a day (DST gaps and repeats decided once, here).

use std::fmt;

use chrono::{Duration, LocalResult, NaiveDate, NaiveTime, TimeZone as _, Timelike};
use serde::{Deserialize, Serialize};

use super::contact::TimeZone;
use super::values::InvalidValue;
use super::Timestamp;

/// A time of day, to the minute (`22:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LocalTime(NaiveTime);

impl LocalTime {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let bad = || {
            InvalidValue(format!(
                "`{s}` is not a time of day; write `HH:MM` (`22:00`)"
            ))
        };
        if s.len() != 5 {
            return Err(bad());
        }
        NaiveTime::parse_from_str(s, "%H:%M")
            .map(Self)
            .map_err(|_| bad())
    }

    pub fn time(self) -> NaiveTime {
        self.0
    }
}

impl fmt::Display for LocalTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0.hour(), self.0.minute())
    }
}

impl TryFrom<String> for LocalTime {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        Self::parse(&s)
    }
}

impl From<LocalTime> for String {
    fn from(t: LocalTime) -> Self {
        t.to_string()
    }
}

/// The first instant on `day` at or after local time `time` in `tz`.
pub fn first_instant(tz: TimeZone, day: NaiveDate, time: NaiveTime) -> Option<Timestamp> {
    let mut local = day.and_time(time);
    // No gap in the tz database is longer than a day.
    for _ in 0..=24 * 60 {
        match tz.tz().from_local_datetime(&local) {
            LocalResult::Single(t) => return Some(t.to_utc()),
            LocalResult::Ambiguous(first, _) => return Some(first.to_utc()),
            LocalResult::None => local += Duration::minutes(1),
        }
    }
    None
}
