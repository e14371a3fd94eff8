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
