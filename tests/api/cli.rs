//! The command line as a newcomer meets it: each command's own flags,
//! errors that name what to fix (once, without colour codes in a file),
//! pipes that close early, and no migrations behind an operator's back.

use std::io::Read;
use std::process::{Command, Stdio};

use crate::helpers::{postgres_server_url, skipped, TestDb};

fn tidings() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings"));
    for var in ["DATABASE_URL", "REDIS_URL", "RUST_LOG"] {
        cmd.env_remove(var);
    }
    cmd
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn each_command_lists_only_the_flags_it_takes() {
    let (ok, help, _) = run(tidings().args(["migrate", "--help"]));
    assert!(ok);
    assert!(help.contains("--database-url") && help.contains("--db-lock-timeout-ms"));
    for server_only in [
        "--listen",
        "--redis-url",
        "--stream-queue",
        "--request-timeout-ms",
    ] {
        assert!(
            !help.contains(server_only),
            "migrate --help lists {server_only}:\n{help}"
        );
    }
    let (ok, help, _) = run(tidings().args(["parked", "skip", "--help"]));
    assert!(ok);
    assert!(help.contains("--cursor") && help.contains("--projection"));
    assert!(!help.contains("--listen"), "{help}");
    let (ok, help, _) = run(tidings().args(["serve", "--help"]));
    assert!(ok);
    assert!(help.contains("--listen") && help.contains("--http-header-timeout-ms"));
    let (ok, _, stderr) = run(tidings().args(["migrate", "--listen", "127.0.0.1:1"]));
    assert!(!ok, "a server flag is refused by migrate");
    assert!(stderr.contains("--listen"), "{stderr}");
}

#[test]
fn a_bad_environment_value_is_reported_under_the_variables_name() {
    let (ok, _, stderr) = run(tidings().arg("migrate").env("TIDINGS_DB_POOL_SIZE", "lots"));
    assert!(!ok);
    assert!(
        stderr.contains("TIDINGS_DB_POOL_SIZE") && stderr.contains("'lots'"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(tidings().env("TIDINGS_LOG_FORMAT", "xml"));
    assert!(!ok);
    assert!(
        stderr.contains("TIDINGS_LOG_FORMAT") && stderr.contains("text, json"),
        "{stderr}"
    );
    // Typed as a flag, it is reported as the flag.
    let (ok, _, stderr) = run(tidings().args(["--db-pool-size", "lots"]));
    assert!(!ok);
    assert!(stderr.contains("--db-pool-size"), "{stderr}");
}

#[test]
fn a_database_url_that_is_not_postgresql_or_not_there_is_said_so_at_once_and_once() {
    let (ok, _, stderr) = run(tidings()
        .arg("migrate")
        .env("DATABASE_URL", "mysql://root@127.0.0.1:3306/test"));
    assert!(!ok);
    assert!(stderr.contains("is not a PostgreSQL URL"), "{stderr}");

    let started = std::time::Instant::now();
    let (ok, _, stderr) = run(tidings()
        .arg("migrate")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"));
    assert!(!ok);
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(!stderr.contains("timed out"), "{stderr}");
    assert_eq!(
        stderr.matches("Connection refused").count(),
        1,
        "the cause is said once:\n{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one error line:\n{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes into a pipe:\n{stderr}"
    );
    // Refused connections answer at once; only a lost packet would wait.
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
}

#[test]
fn writing_the_spec_into_a_pipe_that_closes_early_is_not_a_panic() {
    let mut child = tidings()
        .arg("export-openapi")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 64];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    // stdout is dropped here, as `| head` would.
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(String::from_utf8_lossy(&head).starts_with('{'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_migrate_applies_migrations_and_the_others_say_to_run_it() {
    let test = "cli::only_migrate_applies_migrations_and_the_others_say_to_run_it";
    let Some(server) = postgres_server_url() else {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    };
    let db = TestDb::create(&server).await;
    let tables = || async {
        db.client()
            .await
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    for args in [&["parked", "list"][..], &["events", "export"], &["replay"]] {
        let (ok, _, stderr) = run(tidings().args(args).env("DATABASE_URL", &db.url));
        assert!(!ok, "{args:?}");
        assert!(
            stderr.contains("run `tidings migrate`"),
            "{args:?}: {stderr}"
        );
        assert_eq!(tables().await, 0, "{args:?} migrated the database");
    }
    let (ok, _, stderr) = run(tidings().arg("migrate").env("DATABASE_URL", &db.url));
    assert!(ok, "{stderr}");
    assert!(tables().await > 0);
    let (ok, stdout, stderr) = run(tidings()
        .args(["parked", "list"])
        .env("DATABASE_URL", &db.url));
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "");
    db.drop_database().await;
}

#[test]
fn an_unreachable_redis_at_start_is_said_and_not_claimed_to_carry_updates() {
    let test = "cli::an_unreachable_redis_at_start_is_said_and_not_claimed_to_carry_updates";
    let Some(server) = postgres_server_url() else {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(TestDb::create(&server));
    let mut child = tidings()
        .args(["--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", "redis://127.0.0.1:1/")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut log = String::new();
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !log.contains("tidings is serving") && std::time::Instant::now() < deadline {
        match stderr.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => log.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    runtime.block_on(db.drop_database());
    assert!(log.contains("Redis is unreachable"), "{log}");
    assert!(
        !log.contains("travel between instances through Redis"),
        "{log}"
    );
}

#[test]
fn keys_create_without_a_database_prints_the_secret_and_the_setting_that_holds_its_digest() {
    let (ok, out, err) = run(tidings().args([
        "keys",
        "create",
        "--name",
        "billing",
        "--scopes",
        "send,read",
    ]));
    assert!(ok, "{err}");
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret (shown once; store it now): "))
        .expect("the secret is printed")
        .to_owned();
    assert!(secret.starts_with("tdk_"));
    let setting = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("TIDINGS_API_KEYS='"))
        .and_then(|l| l.strip_suffix('\''))
        .expect("the setting is printed");
    assert!(
        setting.starts_with("billing:send,read:sha256:"),
        "{setting}"
    );
    assert!(
        !setting.contains(&secret[4..]),
        "the setting holds the digest, not the secret"
    );
    let keys = tidings::access::keys::parse_setting(setting).expect("the printed setting parses");
    assert_eq!(keys[0].2, tidings::access::keys::digest(&secret));
    let (ok, _, err) = run(tidings().args(["keys", "create", "--name", "b", "--scopes", "write"]));
    assert!(!ok);
    assert!(err.contains("`write`"), "{err}");
    let (ok, _, err) = run(tidings().args(["keys", "list"]));
    assert!(!ok);
    assert!(err.contains("TIDINGS_API_KEYS"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_create_list_and_revoke_work_on_the_database_and_record_the_operator() {
    let Some(server) = postgres_server_url() else {
        skipped(
            "cli::keys_create_list_and_revoke…",
            "DATABASE_URL is not set",
        );
        return;
    };
    let db = TestDb::create(&server).await;
    db.migrate().await;
    let keys = |args: &[&str]| {
        let mut cmd = tidings();
        cmd.arg("keys")
            .args(args)
            .env("DATABASE_URL", &db.url)
            .env("USER", "ops-alice");
        run(&mut cmd)
    };
    let (ok, out, err) = keys(&["create", "--name", "billing", "--scopes", "send"]);
    assert!(ok, "{err}");
    let id = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix('(').and_then(|w| w.strip_suffix("),")))
        .expect("the id is printed")
        .to_owned();
    assert!(out.contains("secret (shown once"));
    let (ok, list, err) = keys(&["list"]);
    assert!(ok, "{err}");
    assert!(
        list.contains(&id) && list.contains("billing") && list.contains("send"),
        "{list}"
    );
    let (ok, out, err) = keys(&["revoke", "--id", &id]);
    assert!(ok, "{err}");
    assert!(out.contains("revoked"), "{out}");
    let (ok, out, _) = keys(&["revoke", "--id", &id]);
    assert!(ok);
    assert!(out.contains("already revoked"), "{out}");
    let (ok, _, err) = keys(&["revoke", "--id", "not-a-uuid"]);
    assert!(!ok);
    assert!(err.contains("not a key id"), "{err}");
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT event_type, metadata->>'actor' FROM events WHERE aggregate_type = 'ApiKey' ORDER BY sequence",
            &[],
        )
        .await
        .unwrap();
    let recorded: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        recorded,
        vec![
            ("ApiKeyCreated".to_owned(), "cli:ops-alice".to_owned()),
            ("ApiKeyRevoked".to_owned(), "cli:ops-alice".to_owned()),
        ]
    );
    db.drop_database().await;
}
