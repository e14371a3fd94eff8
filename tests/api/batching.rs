//! Batching policies through HTTP: the documented shape, a version per
//! change, turning batching off, and refusals that name the field and
//! store nothing.

use serde_json::{json, Value};

use crate::helpers::TestApp;

const PATH: &str = "/v1/categories/comments/batching";

async fn put(app: &TestApp, body: &Value) -> Value {
    let (status, answer) = app.send("PUT", PATH, Some(body)).await;
    assert_eq!(status, 200, "PUT {body}: {answer}");
    answer
}

on_both_backends!(
    a_policy_takes_the_documented_shape_and_each_change_is_versioned,
    refused_policies_name_the_field_and_store_nothing,
);

async fn a_policy_takes_the_documented_shape_and_each_change_is_versioned(app: &TestApp) {
    let off = app.get_json(PATH).await;
    assert_eq!(
        (off["enabled"].as_bool(), off["version"].as_u64()),
        (Some(false), Some(0)),
        "{off}"
    );
    assert!(off.get("policy").is_none(), "{off}");

    let sliding = json!({
        "window": {"kind": "sliding", "seconds": 60, "max_seconds": 600},
        "max_items": 50,
        "key": "{{ recipient }}/{{ data.post_id }}",
        "first_item_immediately": true,
        "min_items": 2
    });
    let set = put(app, &sliding).await;
    assert_eq!(
        (set["changed"].as_bool(), set["version"].as_u64()),
        (Some(true), Some(1))
    );
    assert_eq!(set["enabled"], true);
    for field in [
        "window",
        "max_items",
        "key",
        "first_item_immediately",
        "min_items",
    ] {
        assert_eq!(set["policy"][field], sliding[field], "{field}: {set}");
    }
    let got = app.get_json(PATH).await;
    assert_eq!(got["policy"], set["policy"]);
    assert_eq!(got["version"], 1);
    let again = put(app, &sliding).await;
    assert_eq!(
        (again["changed"].as_bool(), again["version"].as_u64()),
        (Some(false), Some(1))
    );

    // A schedule, the defaults filled in.
    let weekly = json!({
        "schedule": {"every": "week", "at": "09:00", "weekday": "mon"},
        "max_items": 100
    });
    let set = put(app, &weekly).await;
    assert_eq!(set["version"], 2);
    assert_eq!(set["policy"]["schedule"], weekly["schedule"]);
    assert!(set["policy"].get("window").is_none(), "{set}");
    assert_eq!(set["policy"]["key"], "{{ recipient }}/{{ group_key }}");
    assert_eq!(set["policy"]["min_items"], 1);
    assert_eq!(set["policy"]["first_item_immediately"], false);
    let daily = json!({"schedule": {"every": "day", "at": "18:30"}, "max_items": 2});
    assert_eq!(
        put(app, &daily).await["policy"]["schedule"],
        daily["schedule"]
    );

    let (status, off) = app.send("DELETE", PATH, None).await;
    assert_eq!(status, 200, "{off}");
    assert_eq!(
        (
            off["enabled"].as_bool(),
            off["version"].as_u64(),
            off["changed"].as_bool()
        ),
        (Some(false), Some(4), Some(true)),
        "{off}"
    );
    let (_, again) = app.send("DELETE", PATH, None).await;
    assert_eq!(
        (again["changed"].as_bool(), again["version"].as_u64()),
        (Some(false), Some(4))
    );
    // Another category is its own.
    let other = app.get_json("/v1/categories/billing/batching").await;
    assert_eq!(other["version"], 0);

    // Every change is in the log, with its version. The global log shows
    // an event once no earlier-committing transaction (of any test sharing
    // the cluster) can still appear: wait for all four.
    let start = std::time::Instant::now();
    let versions: Vec<(String, u64)> = loop {
        let events = app.get_json("/v1/events?limit=1000").await;
        let versions: Vec<(String, u64)> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["aggregate_type"] == "Batching")
            .map(|e| {
                let t = e["type"].as_str().unwrap().to_owned();
                let v = e["data"]["version"].as_u64().unwrap();
                (t, v)
            })
            .collect();
        if versions.len() >= 4 || start.elapsed() > std::time::Duration::from_secs(10) {
            break versions;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        versions,
        [
            ("BatchingSet".to_owned(), 1),
            ("BatchingSet".to_owned(), 2),
            ("BatchingSet".to_owned(), 3),
            ("BatchingTurnedOff".to_owned(), 4),
        ]
    );
}

async fn refused_policies_name_the_field_and_store_nothing(app: &TestApp) {
    let fixed = json!({"kind": "fixed", "seconds": 60});
    let cases = [
        (json!({"max_items": 10}), Some("window")),
        (
            json!({"window": fixed, "schedule": {"every": "day", "at": "09:00"}, "max_items": 10}),
            Some("schedule"),
        ),
        (
            json!({"window": {"kind": "fixed", "seconds": 0}, "max_items": 1}),
            Some("window.seconds"),
        ),
        (
            json!({"window": {"kind": "fixed", "seconds": 60}, "max_items": 1001}),
            Some("max_items"),
        ),
        (
            json!({"window": {"kind": "fixed", "seconds": 700000}, "max_items": 10}),
            Some("window.seconds"),
        ),
        (
            json!({"window": {"kind": "sliding", "seconds": 60}, "max_items": 10}),
            Some("window.max_seconds"),
        ),
        (
            json!({"window": {"kind": "sliding", "seconds": 60, "max_seconds": 30}, "max_items": 10}),
            Some("window.max_seconds"),
        ),
        (
            json!({"window": {"kind": "fixed", "seconds": 60, "max_seconds": 90}, "max_items": 10}),
            Some("window.max_seconds"),
        ),
        (
            json!({"schedule": {"every": "week", "at": "09:00"}, "max_items": 10}),
            Some("schedule.weekday"),
        ),
        (
            json!({"schedule": {"every": "day", "at": "09:00", "weekday": "mon"}, "max_items": 10}),
            Some("schedule.weekday"),
        ),
        (
            json!({"schedule": {"every": "day", "at": "25:00"}, "max_items": 10}),
            None,
        ),
        (
            json!({"window": fixed, "max_items": 10, "key": "{{ recipient"}),
            Some("key"),
        ),
        (
            json!({"window": fixed, "max_items": 10, "key": "  "}),
            Some("key"),
        ),
        (
            json!({"window": fixed, "max_items": 10, "key": "k".repeat(201)}),
            Some("key"),
        ),
        (
            json!({"window": fixed, "max_items": 10, "min_items": 11}),
            Some("min_items"),
        ),
        (
            json!({"window": fixed, "max_items": 10, "min_items": 0}),
            Some("min_items"),
        ),
        (
            json!({"window": {"kind": "tumbling", "seconds": 60}, "max_items": 10}),
            None,
        ),
        (
            json!({"window": fixed, "max_items": 10, "digest": true}),
            None,
        ),
        (json!({"window": fixed, "max_items": -1}), None),
        (json!({"window": [60], "max_items": 10}), None),
        (json!({"window": fixed, "max_items": "10"}), None),
    ];
    for (body, field) in cases {
        let (status, problem) = app.send("PUT", PATH, Some(&body)).await;
        assert!(matches!(status, 400 | 422), "{body}: {status} {problem}");
        if let Some(field) = field {
            assert_eq!(status, 422, "{body}: {problem}");
            let named: Vec<&str> = problem["errors"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|f| f["field"].as_str())
                .collect();
            assert!(named.contains(&field), "{field} in {problem}");
        }
    }
    let (status, _) = app
        .send(
            "PUT",
            "/v1/categories/Not%20One/batching",
            Some(&json!({"window": fixed, "max_items": 10})),
        )
        .await;
    assert!(matches!(status, 400 | 422));
    let after = app.get_json(PATH).await;
    assert_eq!(
        (after["enabled"].as_bool(), after["version"].as_u64()),
        (Some(false), Some(0)),
        "nothing was stored: {after}"
    );
}
