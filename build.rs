//! Rebuilds when a migration is added: sqlx's `migrate!` embeds the
//! directory's files at compile time.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
