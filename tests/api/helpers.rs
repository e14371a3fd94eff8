//! Starting the app for a test: on port 0, against memory or a fresh
//! PostgreSQL database of its own, and small HTTP helpers.

use std::io::Write;

use serde_json::{json, Value};
use tidings::config::Settings;
use tidings::Application;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Postgres,
}

/// A TCP port nothing listens on just now, for a server a test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Says on the real stderr (not the captured one) that a test did not run.
pub fn skipped(test: &str, why: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "\n*** SKIPPED {test}: {why} ***");
}

/// The server PostgreSQL tests run on, from `DATABASE_URL`.
pub fn postgres_server_url() -> Option<String> {
    std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty())
}

/// A database made for one test and dropped by `TestApp::cleanup`.
#[derive(Clone)]
pub struct TestDb {
    pub name: String,
    pub url: String,
    server_url: String,
}

async fn admin(server_url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(server_url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("DATABASE_URL is set but PostgreSQL is unreachable: {e}"));
    tokio::spawn(conn);
    client
}

impl TestDb {
    pub async fn create(server_url: &str) -> Self {
        let name = format!("tidings_test_{}", uuid::Uuid::new_v4().simple());
        admin(server_url)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        let url = with_database(server_url, &name);
        Self {
            name,
            url,
            server_url: server_url.to_owned(),
        }
    }

    /// An existing database at `url`, which the test does not drop.
    pub fn at(url: &str) -> TestDb {
        TestDb {
            name: String::new(),
            url: url.to_owned(),
            server_url: url.to_owned(),
        }
    }

    /// This database, reached as `role` (the test server trusts local roles).
    pub fn as_role(&self, role: &str) -> TestDb {
        let (scheme, rest) = self.url.split_once("://").expect("a URL");
        let host = rest.split_once('@').map_or(rest, |(_, h)| h);
        TestDb {
            url: format!("{scheme}://{role}@{host}"),
            ..self.clone()
        }
    }

    /// Applies the migrations, as `tidings migrate` does.
    pub async fn migrate(&self) {
        let pools = tidings::storage::postgres::connect(&self.url, limits())
            .await
            .expect("connect");
        tidings::storage::postgres::migrate(&pools)
            .await
            .expect("migrate");
    }

    /// A client on this test's database, to look at what the app stored.
    pub async fn client(&self) -> tokio_postgres::Client {
        admin(&self.url).await
    }

    /// Appends one event to notification `id`'s stream in this database, as
    /// another writer would (a newer release, say), bypassing the commands.
    pub async fn append_raw(&self, id: &str, sequence: i64, event_type: &str, payload: Value) {
        self.append_raw_to("Notification", id, sequence, event_type, payload)
            .await
    }

    /// The same, to a stream of any aggregate type.
    pub async fn append_raw_to(
        &self,
        aggregate_type: &str,
        id: &str,
        sequence: i64,
        event_type: &str,
        payload: Value,
    ) {
        self.client()
            .await
            .execute(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata)
                 VALUES ($1, $2, $3, $4, '1.0', $5, '{}')",
                &[&aggregate_type, &id, &sequence, &event_type, &payload],
            )
            .await
            .expect("the raw event is appended");
    }

    /// Appends one event whose payload and metadata are given as JSON text
    /// (PostgreSQL stores JSON that tidings' reader may not read back).
    pub async fn append_raw_text(
        &self,
        id: &str,
        sequence: i64,
        event_type: &str,
        payload: &str,
        metadata: &str,
    ) {
        self.client()
            .await
            .execute(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata)
                 VALUES ('Notification', $1, $2, $3, '1.0', $4::text::jsonb, $5::text::jsonb)",
                &[&id, &sequence, &event_type, &payload, &metadata],
            )
            .await
            .expect("the raw event is appended");
    }

    pub async fn drop_database(&self) {
        let _ = admin(&self.server_url)
            .await
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
    }
}

/// The default session limits, as the commands use them.
pub fn limits() -> tidings::storage::postgres::SessionLimits {
    tidings::storage::postgres::SessionLimits::of(&tidings::config::Database::at(None))
}

/// Replaces the database name in a PostgreSQL URL.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub backend: Backend,
    pub db: Option<TestDb>,
    pub addr: std::net::SocketAddr,
    pub state: std::sync::Arc<tidings::AppState>,
    stop: Option<oneshot::Sender<()>>,
    kill: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

pub fn settings(db: Option<&TestDb>) -> Settings {
    Settings::for_tests(db.map(|d| d.url.clone()))
}

impl TestApp {
    /// None when the backend is PostgreSQL and DATABASE_URL is unset (skipped loudly).
    pub async fn spawn(backend: Backend, test: &str) -> Option<Self> {
        Self::spawn_with(backend, test, settings).await
    }

    /// `spawn` with settings of the test's own.
    pub async fn spawn_with(
        backend: Backend,
        test: &str,
        configure: impl FnOnce(Option<&TestDb>) -> Settings,
    ) -> Option<Self> {
        let db = match backend {
            Backend::Memory => None,
            Backend::Postgres => match postgres_server_url() {
                Some(url) => Some(TestDb::create(&url).await),
                None => {
                    skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
                    return None;
                }
            },
        };
        Some(Self::start(backend, db, configure).await)
    }

    pub async fn start(
        backend: Backend,
        db: Option<TestDb>,
        configure: impl FnOnce(Option<&TestDb>) -> Settings,
    ) -> Self {
        let app = Application::build(configure(db.as_ref()))
            .await
            .expect("the app builds");
        let addr = app.addr();
        let state = app.state();
        let (stop, stopped) = oneshot::channel::<()>();
        let (kill, killed) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped_or_killed(
            async move {
                let _ = stopped.await;
            },
            async move {
                if killed.await.is_err() {
                    std::future::pending::<()>().await;
                }
            },
        ));
        Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            backend,
            db,
            addr,
            state,
            stop: Some(stop),
            kill: Some(kill),
            server: Some(server),
        }
    }

    /// Stops everything at once without flushing, as a crash would.
    pub async fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    /// Graceful stop: drain HTTP, flush projectors. Returns what the server returned.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.server.take() {
            Some(server) => server.await.expect("the server task does not panic"),
            None => Ok(()),
        }
    }

    /// Stops this app and starts another on the same database.
    pub async fn restart(mut self) -> Self {
        self.stop().await.expect("a clean stop");
        let db = self.db.take();
        Self::start(self.backend, db, settings).await
    }

    pub async fn cleanup(mut self) {
        let _ = self.stop().await;
        if let Some(db) = self.db.take() {
            db.drop_database().await;
        }
    }

    /// Appends one event to notification `id`'s stream directly, as another
    /// writer would (a newer release, say), bypassing the commands.
    pub async fn append_raw(&self, id: &str, sequence: i64, event_type: &str, payload: Value) {
        self.append_raw_to("Notification", id, sequence, event_type, payload)
            .await
    }

    /// The same, to a stream of any aggregate type.
    pub async fn append_raw_to(
        &self,
        aggregate_type: &str,
        id: &str,
        sequence: i64,
        event_type: &str,
        payload: Value,
    ) {
        match &self.db {
            Some(db) => {
                db.append_raw_to(aggregate_type, id, sequence, event_type, payload)
                    .await
            }
            None => {
                let events = self
                    .state
                    .commands
                    .memory_events()
                    .expect("a memory app has a memory store");
                events
                    .append(vec![cqrs_es::persist::SerializedEvent::new(
                        id.to_owned(),
                        sequence as usize,
                        aggregate_type.into(),
                        event_type.into(),
                        "1.0".into(),
                        payload,
                        json!({}),
                    )])
                    .expect("the raw event is appended");
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post_empty(&self, path: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// POSTs a create and returns (id, cursor); panics unless 201.
    pub async fn create(&self, body: &Value) -> (String, String) {
        let resp = self.post("/v1/notifications", body).await;
        let status = resp.status();
        let json: Value = resp.json().await.expect("a JSON body");
        assert_eq!(status, 201, "create answered {status}: {json}");
        (
            json["id"].as_str().expect("an id").to_owned(),
            json["cursor"].as_str().expect("a cursor").to_owned(),
        )
    }

    /// Runs a command (`read`, `archive`, ...) and returns the receipt; panics unless 200.
    pub async fn command(&self, id: &str, action: &str) -> Value {
        let resp = self
            .post_empty(&format!("/v1/notifications/{id}/{action}"))
            .await;
        let status = resp.status();
        let json: Value = resp.json().await.expect("a JSON body");
        assert_eq!(status, 200, "{action} answered {status}: {json}");
        json
    }

    /// Sends `method` to `path` with a JSON body (or none): the status and
    /// the JSON answer (null when the body is not JSON).
    pub async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut request = self.client.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        let resp = request.send().await.expect("request sent");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// GETs a path expecting 200 and JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let resp = self.get(path).await;
        let status = resp.status();
        let json: Value = resp.json().await.expect("a JSON body");
        assert_eq!(status, 200, "GET {path} answered {status}: {json}");
        json
    }

    /// Every item of an inbox, paging with `limit`, after `min_position`.
    pub async fn whole_inbox(&self, user: &str, limit: usize, min_position: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path =
                format!("/v1/users/{user}/inbox?limit={limit}&min_position={min_position}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = self.get_json(&path).await;
            items.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return items,
            }
        }
    }
}

/// A minimal valid create body for `recipient`.
pub fn notification_for(recipient: &str, title: &str) -> Value {
    json!({
        "recipient": recipient,
        "category": "comment",
        "title": title,
        "body": "Bob replied to your post",
    })
}

/// The greatest of some cursors (they sort like positions).
pub fn max_cursor<'a>(cursors: impl IntoIterator<Item = &'a str>) -> String {
    cursors
        .into_iter()
        .max()
        .expect("at least one cursor")
        .to_owned()
}

/// Runs each named scenario `async fn name(app: &TestApp)` against memory and
/// against PostgreSQL (a fresh database each; skipped loudly without DATABASE_URL).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        on_both_backends!(spawned_by $crate::helpers::TestApp::spawn; $($name),+);
    };
    // `$spawn(backend, test)` starts the app (with settings of the test's own).
    (spawned_by $spawn:path; $($name:ident),+ $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let app = $spawn($crate::helpers::Backend::Memory, stringify!($name))
                        .await
                        .expect("memory always runs");
                    super::$name(&app).await;
                    app.cleanup().await;
                }
            )+
        }
        mod postgres {
            use futures_util::FutureExt;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let test = concat!(module_path!(), "::", stringify!($name));
                    let Some(app) = $spawn($crate::helpers::Backend::Postgres, test).await
                    else {
                        return;
                    };
                    // Drop the test's database even when the scenario fails.
                    let outcome = std::panic::AssertUnwindSafe(super::$name(&app)).catch_unwind().await;
                    app.cleanup().await;
                    if let Err(panic) = outcome {
                        std::panic::resume_unwind(panic);
                    }
                }
            )+
        }
    };
}
