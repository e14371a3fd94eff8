//! Health, the API document, the binary's start-up and shutdown, and what
//! PostgreSQL itself guarantees about the log.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::helpers::{notification_for, postgres_server_url, skipped, Backend, TestApp};

on_both_backends!(health_answers_live_and_ready, docs_and_spec_are_served);

async fn health_answers_live_and_ready(app: &TestApp) {
    let live = app.get_json("/health/live").await;
    assert_eq!(live["status"], "live");
    let ready = app.get_json("/health/ready").await;
    assert_eq!(ready["status"], "ready");
    let expected = match app.backend {
        Backend::Memory => "memory",
        Backend::Postgres => "postgres",
    };
    assert_eq!(ready["storage"], expected);
}

async fn docs_and_spec_are_served(app: &TestApp) {
    let docs = app.get("/docs").await;
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.unwrap();
    assert!(html.contains("swagger"), "the Swagger UI page");
    let spec = app.get_json("/openapi.json").await;
    let committed: Value = serde_json::from_str(include_str!("../../openapi/openapi.json"))
        .expect("committed spec parses");
    assert_eq!(spec, committed, "the served spec is the committed one");
}

#[tokio::test]
async fn the_committed_openapi_document_matches_the_code() {
    let generated = tidings::openapi_json().await.expect("the spec generates");
    let committed = include_str!("../../openapi/openapi.json");
    assert!(
        generated.trim() == committed.trim(),
        "openapi/openapi.json is out of date; regenerate it with \
         `cargo run -- export-openapi --output openapi/openapi.json`"
    );
    let spec: Value = serde_json::from_str(&generated).unwrap();
    let create = &spec["paths"]["/v1/notifications"]["post"];
    assert!(create["requestBody"]["content"]["application/json"]["schema"].is_object());
    for status in ["400", "409", "413", "415", "422", "503"] {
        assert_eq!(
            create["responses"][status]["content"]
                .as_object()
                .map(|c| c.contains_key("application/problem+json")),
            Some(true),
            "create documents its {status} problem answer"
        );
    }
    let example = &spec["components"]["schemas"]["CreateNotificationRequest"]["example"];
    assert_eq!(
        example["recipient"], "alice",
        "the playground has a request example"
    );
}

fn tidings() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings"));
    cmd.env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn the_binary_exits_zero_after_sigterm_and_says_memory_keeps_nothing() {
    use std::io::{BufRead, BufReader, Read};

    let mut child = tidings()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .spawn()
        .expect("the binary starts");
    let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
    let mut log = String::new();
    while !log.contains("tidings is serving") {
        let before = log.len();
        stderr.read_line(&mut log).expect("stderr readable");
        assert!(
            log.len() > before,
            "the binary ended before serving:\n{log}"
        );
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    stderr.read_to_string(&mut log).expect("stderr readable");
    let exit = child.wait().expect("the binary exits");
    let stderr = log;
    assert!(exit.success(), "exit status {exit:?}; stderr:\n{stderr}");
    assert!(stderr.contains("Nothing is kept"), "stderr:\n{stderr}");
    assert!(stderr.contains("flushing projectors"), "stderr:\n{stderr}");
}

#[test]
fn bad_settings_stop_start_up_with_a_message_naming_them() {
    let out = tidings()
        .env("TIDINGS_DB_POOL_SIZE", "0")
        .output()
        .expect("the binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--db-pool-size"), "stderr:\n{stderr}");

    let out = tidings()
        .args(["--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .expect("the binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot connect to PostgreSQL") && stderr.contains("DATABASE_URL"),
        "an unreachable database is a clear start-up error, not a panic:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
}

#[tokio::test]
async fn events_record_who_asked_and_the_log_refuses_changes() {
    let test = "operations::events_record_who_asked_and_the_log_refuses_changes";
    if postgres_server_url().is_none() {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    }
    let app = TestApp::spawn(Backend::Postgres, test)
        .await
        .expect("postgres");
    let resp = app
        .client
        .post(app.url("/v1/notifications"))
        .header("X-Request-Id", "req-123")
        .header("X-Correlation-Id", "flow-9")
        .header("X-Actor", "billing-service")
        .json(&notification_for("quinn", "Invoice"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-request-id"], "req-123");
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let client = app.db.as_ref().unwrap().client().await;
    let rows = client
        .query(
            "SELECT event_type, metadata FROM events WHERE aggregate_id = $1 ORDER BY sequence",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "created and delivered");
    for row in &rows {
        let metadata: Value = row.get(1);
        assert_eq!(metadata["request_id"], "req-123");
        assert_eq!(metadata["correlation_id"], "flow-9");
        assert_eq!(metadata["actor"], "anonymous");
        assert_eq!(metadata["on_behalf_of"], "billing-service");
        assert_eq!(metadata["command"], "Create");
    }

    for statement in [
        "UPDATE events SET payload = '{}'::jsonb",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let err = client.batch_execute(statement).await.expect_err(statement);
        assert!(
            err.to_string().contains("append-only") || format!("{err:?}").contains("append-only"),
            "{statement}: {err:?}"
        );
    }
    let count: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2);
    app.cleanup().await;
}
