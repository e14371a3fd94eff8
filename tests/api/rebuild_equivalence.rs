//! Invariant 4 on PostgreSQL: rebuilding the inbox from zero gives the read
//! model that live processing built, for random command histories. The
//! rebuild reads 7 events at a time into a cache of 3 rows, so rows are
//! written out, read back, updated and deleted through the table, not only
//! folded in memory.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

use crate::helpers::{postgres_server_url, settings, skipped, Backend, TestApp, TestDb};

/// One step: create (for ann or bob; with email too; scheduled), or a
/// command on an earlier notification.
pub type Step = (bool, usize, u8, u8);

fn script() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec((any::<bool>(), 0usize..12, 0u8..10, 0u8..4), 1..70)
}

/// Runs the step through HTTP; refusals (409, 422) are part of the story.
/// Returns the cursor of what was recorded, if anything was.
pub async fn run_step(app: &TestApp, ids: &mut Vec<String>, step: Step) -> Option<String> {
    let (create, target, action, shape) = step;
    let resp = if create || ids.is_empty() {
        let recipient = ["ann", "bob"][usize::from(shape % 2)];
        let category = ["comment", "mention"][usize::from(shape / 2)];
        let mut body = json!({
            "recipient": recipient,
            "category": category,
            "title": format!("n{}", ids.len()),
            "body": "b",
        });
        if shape & 1 == 1 {
            body["channels"] = json!(["in_app", "email"]);
        }
        if shape == 3 {
            body["deliver_at"] = json!("2099-01-01T00:00:00Z");
        }
        app.post("/v1/notifications", &body).await
    } else {
        let id = &ids[target % ids.len()];
        let path = |action: &str| format!("/v1/notifications/{id}/{action}");
        match action {
            0 => app.post_empty(&path("read")).await,
            1 => app.post_empty(&path("unread")).await,
            2 => app.post_empty(&path("seen")).await,
            3 => app.post_empty(&path("click")).await,
            4 => app.post_empty(&path("archive")).await,
            5 => app.post_empty(&path("unarchive")).await,
            6 => app
                .client
                .delete(app.url(&format!("/v1/notifications/{id}")))
                .send()
                .await
                .unwrap(),
            7 => app.post_empty(&path("cancel")).await,
            8 => {
                app.post(&path("deliver"), &json!({"channel": "in_app"}))
                    .await
            }
            _ => {
                app.post(&path("deliver"), &json!({"channel": "email"}))
                    .await
            }
        }
    };
    let status = resp.status().as_u16();
    assert!(
        matches!(status, 200 | 201 | 409 | 422),
        "a command answered {status}"
    );
    let body: Value = resp.json().await.unwrap();
    if status == 201 {
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    body["cursor"].as_str().map(str::to_owned)
}

/// Every row of the live inbox table, as text.
async fn table(db: &TestDb) -> Vec<Vec<Option<String>>> {
    db.client()
        .await
        .query(
            "SELECT id::text, recipient, category, lifecycle, in_inbox::text, read::text,
                    seen::text, archived::text, inbox_tx::text, inbox_seq::text, state::text,
                    last_tx::text, last_seq::text
               FROM inbox_live ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (0..13).map(|i| r.get::<_, Option<String>>(i)).collect())
        .collect()
}

async fn check(server: &str, steps: Vec<Step>) {
    use futures_util::FutureExt;

    let db = TestDb::create(server).await;
    let app = TestApp::start(Backend::Postgres, Some(db), |db| {
        let mut s = settings(db);
        s.rebuild.rebuild_page_size = 7;
        s.rebuild.rebuild_cache_rows = 3;
        s
    })
    .await;
    // Drop the case's database even when it fails (shrinking runs many).
    let outcome = std::panic::AssertUnwindSafe(live_equals_rebuilt(&app, steps))
        .catch_unwind()
        .await;
    app.cleanup().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn live_equals_rebuilt(app: &TestApp, steps: Vec<Step>) {
    let mut ids = Vec::new();
    let mut last = None;
    for step in steps {
        if let Some(cursor) = run_step(app, &mut ids, step).await {
            last = last.max(Some(cursor));
        }
    }
    if let Some(cursor) = &last {
        app.get_json(&format!("/v1/users/ann/inbox?min_position={cursor}"))
            .await;
    }
    let db = app.db.clone().expect("postgres");
    let live = table(&db).await;
    let resp = app.post_empty("/v1/projections/inbox/rebuild").await;
    assert_eq!(resp.status(), 202);
    let mut done = false;
    for _ in 0..600 {
        let status = app.get_json("/v1/projections").await[0]["rebuild"]["status"].clone();
        if status == "done" {
            done = true;
            break;
        }
        assert_ne!(
            status,
            "failed",
            "{}",
            app.get_json("/v1/projections").await
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(done, "the rebuild finished");
    let rebuilt = table(&db).await;
    assert_eq!(
        rebuilt, live,
        "the rebuilt table is the live one, row for row"
    );
}

#[test]
fn rebuilding_from_zero_gives_the_live_read_model_on_postgres() {
    let test = "rebuild_equivalence::rebuilding_from_zero_gives_the_live_read_model_on_postgres";
    let Some(server) = postgres_server_url() else {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    };
    scripts(8, |runtime, steps| runtime.block_on(check(&server, steps)));
}

/// Runs `case` on `cases` random scripts, each on a runtime of two workers.
pub fn scripts(cases: u32, case: impl Fn(&tokio::runtime::Runtime, Vec<Step>)) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&script(), |steps| {
            case(&runtime, steps);
            Ok(())
        })
        .unwrap();
}
