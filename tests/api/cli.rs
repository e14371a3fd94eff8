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
