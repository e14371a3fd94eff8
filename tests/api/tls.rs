//! TLS on every connection: a PostgreSQL of the test's own that takes TLS
//! connections only (a self-signed certificate made here), reached with
//! `sslmode=require` by the server's pool, its leader and maintenance locks,
//! a rebuild's stages and the commands; `verify-full` against the
//! certificate; `rediss://` to a Redis of the test's own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::{free_port, notification_for, settings, skipped, Backend, TestApp, TestDb};

/// A directory of the test's own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tidings-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate authority of the test's own and a certificate it signs for
/// localhost and 127.0.0.1: (authority's certificate, certificate, key).
fn certificate(dir: &Path, name: &str) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let path = |suffix: &str| dir.join(format!("{name}{suffix}"));
    let (ca, ca_key) = (path("-ca.crt"), path("-ca.key"));
    let (cert, key, request) = (path(".crt"), path(".key"), path(".csr"));
    let ext = path(".ext");
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .ok()?;
    let openssl = |args: &[&std::ffi::OsStr]| {
        Command::new("openssl")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    let made = openssl(&[
        &os("req"),
        &os("-x509"),
        &os("-newkey"),
        &os("rsa:2048"),
        &os("-nodes"),
        &os("-days"),
        &os("1"),
        &os("-subj"),
        &os(&format!("/CN={name} test authority")),
        &os("-keyout"),
        ca_key.as_os_str(),
        &os("-out"),
        ca.as_os_str(),
    ]) && openssl(&[
        &os("req"),
        &os("-newkey"),
        &os("rsa:2048"),
        &os("-nodes"),
        &os("-subj"),
        &os("/CN=localhost"),
        &os("-keyout"),
        key.as_os_str(),
        &os("-out"),
        request.as_os_str(),
    ]) && openssl(&[
        &os("x509"),
        &os("-req"),
        &os("-in"),
        request.as_os_str(),
        &os("-CA"),
        ca.as_os_str(),
        &os("-CAkey"),
        ca_key.as_os_str(),
        &os("-CAcreateserial"),
        &os("-days"),
        &os("1"),
        &os("-extfile"),
        ext.as_os_str(),
        &os("-out"),
        cert.as_os_str(),
    ]);
    made.then_some((ca, cert, key))
}

/// PostgreSQL's programs, if this machine has them.
fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// Runs a PostgreSQL program as the `postgres` user when the test runs as
/// root (PostgreSQL refuses to run as root).
fn as_postgres(program: &Path) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// A PostgreSQL that accepts only TLS connections over TCP.
struct TlsPostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    /// The authority the server's certificate chains to.
    ca: PathBuf,
    _dir: Scratch,
}

impl TlsPostgres {
    fn start() -> Result<Self, String> {
        let bin = pg_bin().ok_or("no PostgreSQL programs under /usr/lib/postgresql")?;
        let dir = Scratch::new("tls-pg");
        let (ca, cert, key) =
            certificate(&dir.0, "server").ok_or("openssl could not make a certificate")?;
        let data = dir.0.join("data");
        let chown = |path: &Path| {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                let _ = Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(path)
                    .status();
            }
        };
        // The key must be its owner's alone.
        let _ = Command::new("chmod").arg("600").arg(&key).status();
        chown(&dir.0);
        let init = as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !init.status.success() {
            return Err(format!("initdb: {}", String::from_utf8_lossy(&init.stderr)));
        }
        let port = free_port();
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nfsync = off\n",
            dir.0.display(),
            cert.display(),
            key.display()
        );
        let append = |file: &str, text: &str| {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(data.join(file))
                .and_then(|mut f| f.write_all(text.as_bytes()))
        };
        append("postgresql.conf", &conf).map_err(|e| e.to_string())?;
        // TCP only with TLS: a connection made without it is refused.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .map_err(|e| e.to_string())?;
        chown(&data);
        let started = as_postgres(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.0.join("log"))
            .args(["-w", "start"])
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("pg_ctl: {e}"))?;
        if !started.success() {
            let log = std::fs::read_to_string(dir.0.join("log")).unwrap_or_default();
            return Err(format!("pg_ctl start failed: {log}"));
        }
        Ok(Self {
            bin,
            data,
            port,
            ca,
            _dir: dir,
        })
    }

    fn url(&self, db: &str, options: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}?{options}", self.port)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_postgresql_connection_honours_sslmode_require_and_verify_full() {
    let test = "tls::every_postgresql_connection_honours_sslmode_require_and_verify_full";
    let server = match TlsPostgres::start() {
        Ok(server) => server,
        Err(why) => {
            skipped(
                test,
                &format!("no PostgreSQL of the test's own could start: {why}"),
            );
            return;
        }
    };
    let url = server.url("postgres", "sslmode=require");
    // The commands, TLS too: migrate makes the schema.
    let migrate = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );

    let db = TestDb::at(&url);
    let mut app = TestApp::start(Backend::Postgres, Some(db.clone()), settings).await;
    let (id, cursor) = app.create(&notification_for("secret", "over TLS")).await;
    let inbox = app
        .get_json(&format!("/v1/users/secret/inbox?min_position={cursor}"))
        .await;
    assert_eq!(inbox["items"][0]["id"], id.as_str());
    assert_eq!(app.get_json("/v1/projections").await[0]["leader"], true);
    // A rebuild: the maintenance lock and the rebuild's stages connect too.
    assert_eq!(
        app.post_empty("/v1/projections/inbox/rebuild")
            .await
            .status(),
        202
    );
    for _ in 0..200 {
        if app.get_json("/v1/projections").await[0]["version"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.get_json("/v1/projections").await[0]["version"], 2);
    let parked = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["parked", "list"])
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(
        parked.status.success(),
        "{}",
        String::from_utf8_lossy(&parked.stderr)
    );

    // Every client connection to this server is encrypted (pg_hba refuses
    // the others, so a connection that skipped TLS would have failed).
    let pools = tidings::storage::postgres::connect(&url, crate::helpers::limits())
        .await
        .unwrap();
    let client = pools.connector.connect().await.unwrap();
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl)
               FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.backend_type = 'client backend' AND a.client_addr IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    let (all, encrypted): (i64, i64) = (row.get(0), row.get(1));
    assert!(all >= 3, "the pool, the leader lock and this one: {all}");
    assert_eq!(all, encrypted);

    // verify-full against the certificate works; against another root it
    // is refused, saying why.
    let ca = server.ca.display();
    let full = server.url("postgres", &format!("sslmode=verify-full&sslrootcert={ca}"));
    let verified = tidings::storage::postgres::connect(&full, crate::helpers::limits()).await;
    assert!(verified.is_ok(), "{:?}", verified.err());
    let other = Scratch::new("other-ca");
    let (other_ca, _, _) = certificate(&other.0, "other").unwrap();
    let wrong = server.url(
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={}", other_ca.display()),
    );
    let refused = tidings::storage::postgres::connect(&wrong, crate::helpers::limits()).await;
    let err = format!("{:#}", refused.err().expect("an unknown root is refused"));
    assert!(err.contains("certificate") || err.contains("TLS"), "{err}");
    // The server goes with the test; there is no database to drop.
    app.stop().await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_carries_stream_updates_over_tls() {
    let test = "tls::rediss_carries_stream_updates_over_tls";
    let Some(server) = crate::helpers::postgres_server_url() else {
        skipped(test, "DATABASE_URL is not set (Redis needs PostgreSQL)");
        return;
    };
    let dir = Scratch::new("tls-redis");
    let Some((ca, cert, key)) = certificate(&dir.0, "redis") else {
        skipped(test, "openssl could not make a certificate");
        return;
    };
    let port = free_port();
    let mut redis = match Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .arg("--tls-ca-cert-file")
        .arg(&ca)
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            skipped(test, &format!("redis-server could not start: {e}"));
            return;
        }
    };
    let db = TestDb::create(&server).await;
    let listen = format!("127.0.0.1:{}", free_port());
    // The binary trusts the test's certificate through SSL_CERT_FILE, as any
    // rustls client that reads the system's roots does.
    let mut tidings = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", format!("rediss://localhost:{port}/"))
        .env("SSL_CERT_FILE", &ca)
        .env("TIDINGS_LISTEN", &listen)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let mut redis_state = serde_json::Value::Null;
    for _ in 0..200 {
        if let Ok(resp) = client
            .get(format!("http://{listen}/health/ready"))
            .send()
            .await
        {
            if let Ok(view) = resp.json::<serde_json::Value>().await {
                redis_state = view["redis"].clone();
                if redis_state == "up" {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = tidings.kill();
    let _ = tidings.wait();
    let _ = redis.kill();
    let _ = redis.wait();
    db.drop_database().await;
    assert_eq!(redis_state, "up", "tidings reached Redis over TLS");
}
