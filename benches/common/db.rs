//! What the PostgreSQL benchmarks share: a database of the run's own.

/// A connection to the DATABASE_URL server.
pub async fn admin(server_url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(server_url, tokio_postgres::NoTls)
        .await
        .expect("DATABASE_URL is set but PostgreSQL is unreachable");
    tokio::spawn(conn);
    client
}

/// A database of the run's own on the DATABASE_URL server: (name, url).
pub async fn fresh_database(server_url: &str) -> (String, String) {
    let name = format!("tidings_bench_{}", uuid::Uuid::new_v4().simple());
    admin(server_url)
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create the bench database");
    let (base, query) = server_url
        .split_once('?')
        .map_or((server_url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = base[scheme_end..]
        .find('/')
        .map_or(base, |i| &base[..scheme_end + i]);
    let url = match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    };
    (name, url)
}

/// Drops a database `fresh_database` made.
pub async fn drop_database(server_url: &str, name: &str) {
    let _ = admin(server_url)
        .await
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
}

/// Where a run on `backend` keeps its data: `Some(None)` for memory, a
/// fresh database on the DATABASE_URL server for PostgreSQL, and None
/// (said loudly) when PostgreSQL is asked for without DATABASE_URL.
#[allow(dead_code)] // not every benchmark runs on both backends
pub async fn database_for(backend: &str) -> Option<Option<(String, String)>> {
    let server = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty());
    match (backend, server) {
        ("memory", _) => Some(None),
        ("postgres", Some(server)) => Some(Some(fresh_database(&server).await)),
        ("postgres", None) => {
            eprintln!("*** SKIPPED postgres benchmark: DATABASE_URL is not set ***");
            None
        }
        (other, _) => panic!("unknown backend {other}"),
    }
}

/// Drops what `database_for` made.
#[allow(dead_code)]
pub async fn release(db: Option<(String, String)>) {
    if let (Some((name, _)), Ok(server)) = (db, std::env::var("DATABASE_URL")) {
        drop_database(&server, &name).await;
    }
}
