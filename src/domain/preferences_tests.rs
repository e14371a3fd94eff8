use super::*;
use chrono::{DateTime, Duration};
use proptest::prelude::*;

fn category(s: &str) -> Category {
    Category::parse(s).unwrap()
}

fn at(s: &str) -> Timestamp {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

fn quiet(start: &str, end: &str) -> QuietHours {
    QuietHours::new(
        LocalTime::parse(start).unwrap(),
        LocalTime::parse(end).unwrap(),
    )
    .unwrap()
}

fn berlin() -> TimeZone {
    TimeZone::parse("Europe/Berlin").unwrap()
}

/// The levels a case sets, each as JSON in the shape the API takes.
struct Given {
    user: serde_json::Value,
    tenant: Option<serde_json::Value>,
    categories: Vec<(&'static str, &'static [Channel], bool)>,
}

fn resolve(given: &Given, cat: &str, channel: Channel) -> (bool, Level) {
    let user: Preferences = serde_json::from_value(given.user.clone()).unwrap();
    let tenant: Option<Preferences> = given
        .tenant
        .clone()
        .map(|t| serde_json::from_value(t).unwrap());
    let categories = given
        .categories
        .iter()
        .map(|(name, defaults, critical)| {
            (
                category(name),
                (
                    CategorySettings {
                        default_channels: defaults.iter().copied().collect(),
                        critical: *critical,
                    },
                    7,
                ),
            )
        })
        .collect();
    let resolver = Resolver {
        user: Versioned {
            value: &user,
            version: 3,
        },
        tenant: tenant.as_ref().map(|value| Versioned { value, version: 5 }),
        categories: &categories,
    };
    let decision = resolver.decide(&category(cat), channel);
    let expected_version = match decision.level {
        Level::User => 3,
        Level::Tenant => 5,
        Level::Category | Level::Critical => 7,
        Level::Default => 0,
    };
    assert_eq!(
        decision.version, expected_version,
        "the deciding level's version"
    );
    (decision.enabled, decision.level)
}

#[test]
fn preference_resolution_follows_user_then_tenant_then_category_default() {
    use Channel::{Email, InApp, Push, Sms};
    let nobody = serde_json::json!({});
    let marketing_defaults: &[Channel] = &[InApp, Email];
    // (case, given, category, channel, expected)
    type Case = (&'static str, Given, &'static str, Channel, (bool, Level));
    let cases: Vec<Case> = vec![
        (
            "nothing configured: on by default",
            Given {
                user: nobody.clone(),
                tenant: None,
                categories: vec![],
            },
            "comment",
            Sms,
            (true, Level::Default),
        ),
        (
            "a channel outside the category's defaults is off",
            Given {
                user: nobody.clone(),
                tenant: None,
                categories: vec![("marketing", marketing_defaults, false)],
            },
            "marketing",
            Sms,
            (false, Level::Category),
        ),
        (
            "a channel inside the category's defaults is on",
            Given {
                user: nobody.clone(),
                tenant: None,
                categories: vec![("marketing", marketing_defaults, false)],
            },
            "marketing",
            Email,
            (true, Level::Category),
        ),
        (
            "the user's opt-out beats the category default",
            Given {
                user: serde_json::json!({"channels": {"email": false}}),
                tenant: None,
                categories: vec![("marketing", marketing_defaults, false)],
            },
            "marketing",
            Email,
            (false, Level::User),
        ),
        (
            "the user's opt-in beats the category default",
            Given {
                user: serde_json::json!({"categories": {"marketing": {"channels": {"sms": true}}}}),
                tenant: None,
                categories: vec![("marketing", marketing_defaults, false)],
            },
            "marketing",
            Sms,
            (true, Level::User),
        ),
        (
            "the user's per-category choice beats the user's per-channel one",
            Given {
                user: serde_json::json!({"channels": {"email": false}, "categories": {"billing": {"channels": {"email": true}}}}),
                tenant: None,
                categories: vec![],
            },
            "billing",
            Email,
            (true, Level::User),
        ),
        (
            "the user's per-channel choice holds in the other categories",
            Given {
                user: serde_json::json!({"channels": {"email": false}, "categories": {"billing": {"channels": {"email": true}}}}),
                tenant: None,
                categories: vec![],
            },
            "comment",
            Email,
            (false, Level::User),
        ),
        (
            "the tenant's default beats the category default",
            Given {
                user: nobody.clone(),
                tenant: Some(
                    serde_json::json!({"categories": {"marketing": {"channels": {"email": false}}}}),
                ),
                categories: vec![("marketing", marketing_defaults, false)],
            },
            "marketing",
            Email,
            (false, Level::Tenant),
        ),
        (
            "the tenant overrides a category default on",
            Given {
                user: nobody.clone(),
                tenant: Some(serde_json::json!({"channels": {"sms": true}})),
                categories: vec![("marketing", marketing_defaults, false)],
            },
            "marketing",
            Sms,
            (true, Level::Tenant),
        ),
        (
            "the user beats the tenant",
            Given {
                user: serde_json::json!({"channels": {"push": true}}),
                tenant: Some(serde_json::json!({"channels": {"push": false}})),
                categories: vec![],
            },
            "comment",
            Push,
            (true, Level::User),
        ),
        (
            "the user's channel-wide choice beats the tenant's per-category one",
            Given {
                user: serde_json::json!({"channels": {"email": true}}),
                tenant: Some(
                    serde_json::json!({"categories": {"marketing": {"channels": {"email": false}}}}),
                ),
                categories: vec![],
            },
            "marketing",
            Email,
            (true, Level::User),
        ),
        (
            "a critical category cannot be muted by the user",
            Given {
                user: serde_json::json!({"channels": {"email": false}, "categories": {"security": {"channels": {"email": false}}}}),
                tenant: None,
                categories: vec![("security", &[InApp], true)],
            },
            "security",
            Email,
            (true, Level::Critical),
        ),
        (
            "a critical category cannot be muted by the tenant",
            Given {
                user: nobody.clone(),
                tenant: Some(serde_json::json!({"channels": {"in_app": false}})),
                categories: vec![("security", &[InApp], true)],
            },
            "security",
            InApp,
            (true, Level::Critical),
        ),
        (
            "an unconfigured category is not critical: the opt-out works",
            Given {
                user: serde_json::json!({"categories": {"security": {"channels": {"in_app": false}}}}),
                tenant: None,
                categories: vec![],
            },
            "security",
            InApp,
            (false, Level::User),
        ),
    ];
    for (case, given, cat, channel, expected) in cases {
        assert_eq!(resolve(&given, cat, channel), expected, "{case}");
    }
}

#[test]
fn quiet_hours_across_midnight_hold_until_they_end_in_the_users_time_zone() {
    let night = quiet("22:00", "07:00");
    // Berlin is UTC+1 in January.
    let cases = [
        ("2026-01-10T22:30:00Z", Some("2026-01-11T06:00:00Z")), // 23:30 local
        ("2026-01-11T05:59:00Z", Some("2026-01-11T06:00:00Z")), // 06:59 local
        ("2026-01-10T21:00:00Z", Some("2026-01-11T06:00:00Z")), // 22:00 local: starts
        ("2026-01-11T06:00:00Z", None),                         // 07:00 local: over
        ("2026-01-10T20:59:00Z", None),                         // 21:59 local
        ("2026-01-10T12:00:00Z", None),
    ];
    for (now, until) in cases {
        assert_eq!(night.until(at(now), berlin()), until.map(at), "at {now}");
    }
    // The same instant, another zone: 23:30 in Berlin is 17:30 in New York.
    let new_york = TimeZone::parse("America/New_York").unwrap();
    assert_eq!(night.until(at("2026-01-10T22:30:00Z"), new_york), None);
    assert_eq!(
        night.until(at("2026-01-10T22:30:00Z"), TimeZone::UTC),
        Some(at("2026-01-11T07:00:00Z"))
    );
}

#[test]
fn quiet_hours_within_a_day_hold_only_inside_them() {
    let lunch = quiet("12:00", "13:30");
    assert_eq!(
        lunch.until(at("2026-06-01T12:15:00Z"), TimeZone::UTC),
        Some(at("2026-06-01T13:30:00Z"))
    );
    assert_eq!(lunch.until(at("2026-06-01T13:30:00Z"), TimeZone::UTC), None);
    assert_eq!(lunch.until(at("2026-06-01T11:59:00Z"), TimeZone::UTC), None);
}

#[test]
fn quiet_hours_end_at_the_local_wall_time_across_a_dst_change() {
    let night = quiet("22:00", "07:00");
    // 2026-03-29: Berlin moves from UTC+1 to UTC+2 at 02:00. 23:00 on the
    // 28th (CET) is held until 07:00 CEST, 05:00 UTC, not 06:00.
    assert_eq!(
        night.until(at("2026-03-28T22:00:00Z"), berlin()),
        Some(at("2026-03-29T05:00:00Z"))
    );
    // 2026-10-25: back to UTC+1 at 03:00. 07:00 CET is 06:00 UTC.
    assert_eq!(
        night.until(at("2026-10-24T21:00:00Z"), berlin()),
        Some(at("2026-10-25T06:00:00Z"))
    );
}

#[test]
fn quiet_hours_ending_in_a_skipped_hour_end_when_the_clocks_land_and_in_a_repeated_hour_at_its_first(
) {
    let short = quiet("22:00", "02:30");
    // 02:30 does not exist in Berlin on 2026-03-29: the clocks go from
    // 02:00 CET to 03:00 CEST, which is 01:00 UTC.
    assert_eq!(
        short.until(at("2026-03-28T22:00:00Z"), berlin()),
        Some(at("2026-03-29T01:00:00Z"))
    );
    // 02:30 happens twice on 2026-10-25: first in CEST (00:30 UTC).
    assert_eq!(
        short.until(at("2026-10-24T21:00:00Z"), berlin()),
        Some(at("2026-10-25T00:30:00Z"))
    );
}

#[test]
fn quiet_hours_need_a_span_and_times_of_day_are_hh_mm() {
    assert!(QuietHours::new(
        LocalTime::parse("22:00").unwrap(),
        LocalTime::parse("22:00").unwrap()
    )
    .is_err());
    for bad in ["24:00", "7:00", "07:60", "07:00:00", "", "noon", "07-00"] {
        assert!(LocalTime::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(LocalTime::parse("07:05").unwrap().to_string(), "07:05");
    let json = serde_json::to_value(quiet("22:00", "07:00")).unwrap();
    assert_eq!(json, serde_json::json!({"start": "22:00", "end": "07:00"}));
}

proptest! {
    /// Wherever and whenever, a hold ends later than it starts, and at its
    /// end the quiet hours are over.
    #[test]
    fn a_hold_ends_after_it_starts_and_outside_the_quiet_hours(
        secs in 1_700_000_000i64..1_900_000_000,
        zone in 0usize..chrono_tz::TZ_VARIANTS.len(),
        start in 0u32..1440,
        length in 1u32..1439,
    ) {
        let tz = TimeZone::parse(chrono_tz::TZ_VARIANTS[zone].name()).unwrap();
        let time = |m: u32| LocalTime::parse(&format!("{:02}:{:02}", m / 60, m % 60)).unwrap();
        let hours = QuietHours::new(time(start), time((start + length) % 1440)).unwrap();
        let now = DateTime::from_timestamp(secs, 0).unwrap();
        if let Some(until) = hours.until(now, tz) {
            prop_assert!(until > now);
            prop_assert!(until - now <= Duration::hours(26), "{now} held until {until}");
            prop_assert_eq!(hours.until(until, tz), None, "over at {}", until);
        }
    }
}
