//! Least privilege: `tidings serve` runs as the role ops/app-role.sql makes,
//! which can read and append events but cannot change or delete one, nor
//! drop the trigger that keeps the log append-only. The owner migrates and
//! rebuilds.

use std::process::Command;

use crate::helpers::{
    notification_for, postgres_server_url, settings, skipped, Backend, TestApp, TestDb,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_as_a_role_that_can_only_read_and_append_the_log() {
    let test = "privilege::serve_runs_as_a_role_that_can_only_read_and_append_the_log";
    let Some(server) = postgres_server_url() else {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    };
    let db = TestDb::create(&server).await;
    db.migrate().await;
    let role = format!("tidings_app_{}", &db.name[db.name.len() - 12..]);
    let owner = db.client().await;
    owner
        .batch_execute(&include_str!("../../ops/app-role.sql").replace("tidings_app", &role))
        .await
        .expect("the role script runs as the owner");

    let app_db = db.as_role(&role);
    let mut app = TestApp::start(Backend::Postgres, Some(app_db.clone()), |d| {
        let mut s = settings(d);
        s.skip_migrations = true;
        s
    })
    .await;
    let (id, cursor) = app.create(&notification_for("least", "hello")).await;
    app.get_json(&format!("/v1/users/least/inbox?min_position={cursor}"))
        .await;
    app.command(&id, "read").await;

    // The serving role cannot rewrite history, nor switch off its guard.
    let served = app_db.client().await;
    for statement in [
        "UPDATE events SET payload = '{}'::jsonb",
        "DELETE FROM events",
        "TRUNCATE events",
        "DROP TRIGGER events_no_update_or_delete ON events",
        "ALTER TABLE events DISABLE TRIGGER events_no_update_or_delete",
        "CREATE TABLE sneaky (x int)",
    ] {
        let err = served.batch_execute(statement).await.expect_err(statement);
        let code = err.code().map(|c| c.code().to_owned());
        assert!(
            matches!(code.as_deref(), Some("42501")),
            "{statement}: {err:?}"
        );
    }

    // The owner rebuilds; the serving role goes on writing the new version.
    let replay = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["replay", "--projection", "inbox"])
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let (after, cursor) = app
        .create(&notification_for("least", "after the rebuild"))
        .await;
    let inbox = app
        .get_json(&format!("/v1/users/least/inbox?min_position={cursor}"))
        .await;
    assert_eq!(inbox["items"][0]["id"], after.as_str());
    assert_eq!(app.get_json("/v1/projections").await[0]["version"], 2);

    app.stop().await.ok();
    drop(served);
    owner
        .batch_execute(&format!("DROP OWNED BY {role}"))
        .await
        .unwrap();
    db.drop_database().await;
    owner_drop_role(&server, &role).await;
}

async fn owner_drop_role(server: &str, role: &str) {
    let (client, conn) = tokio_postgres::connect(server, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let _ = client
        .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
        .await;
}
