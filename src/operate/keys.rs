//! `tidings keys create|list|revoke`: API keys from the command line. With
//! DATABASE_URL the key is an event in the store, in force on every
//! instance within a second; without, the secret is made and printed with
//! the `TIDINGS_API_KEYS` entry (its digest, not the secret) that puts it in
//! force on a memory-store instance.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;

use crate::access::keys::{KeyRing, NewSecret};
use crate::access::lifecycle::KeyAdmin;
use crate::access::usage;
use crate::commands::{CommandMetadata, Commands, EventStore};
use crate::domain::{parse_scopes, KeyName};
use crate::storage::postgres::{self, PgEventLog, PgPools, SessionLimits};
use crate::storage::AppendSignal;

pub enum KeysAction {
    Create { name: String, scopes: String },
    List,
    Revoke { id: String },
}

/// Who the command line acts as: `cli:{login}`.
fn metadata() -> CommandMetadata {
    let login = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    let id = uuid::Uuid::now_v7().to_string();
    CommandMetadata {
        request_id: id.clone(),
        correlation_id: id,
        actor: format!("cli:{login}"),
        ..CommandMetadata::default()
    }
}

async fn admin(url: &str, limits: SessionLimits) -> anyhow::Result<(KeyAdmin, PgPools)> {
    let pools = postgres::connect(url, limits.with_pool_size(2)).await?;
    postgres::require_schema(&pools).await?;
    let log = Arc::new(PgEventLog::new(pools.deadpool.clone()));
    let ring = Arc::new(KeyRing::new(Vec::new(), log));
    ring.refresh().await.context("reading the API keys")?;
    let commands = Commands::new(
        EventStore::postgres(&pools),
        (),
        AppendSignal::default(),
        10,
    );
    Ok((
        KeyAdmin {
            commands: Arc::new(commands),
            ring,
        },
        pools,
    ))
}

pub async fn run(
    url: Option<&str>,
    limits: SessionLimits,
    action: KeysAction,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match (action, url) {
        (KeysAction::Create { name, scopes }, url) => {
            let name = KeyName::parse(&name).map_err(|e| anyhow::anyhow!("--name {}", e.0))?;
            let scopes = parse_scopes(&scopes).map_err(|e| anyhow::anyhow!("--scopes: {}", e.0))?;
            let listed = scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",");
            let Some(url) = url else {
                let secret = NewSecret::generate()?;
                writeln!(out, "secret (shown once; store it now): {}", secret.secret)?;
                writeln!(
                    out,
                    "no DATABASE_URL: put the key in force on a memory-store instance with\n  TIDINGS_API_KEYS='{name}:{listed}:sha256:{}'",
                    secret.digest
                )?;
                return Ok(());
            };
            let (admin, _pools) = admin(url, limits).await?;
            let created = admin.create(name.clone(), scopes, &metadata()).await?;
            writeln!(out, "created key `{name}` ({}), scopes {listed}", created.id)?;
            writeln!(out, "secret (shown once; store it now): {}", created.secret)?;
            Ok(())
        }
        (_, None) => anyhow::bail!(
            "without DATABASE_URL keys come from TIDINGS_API_KEYS; list a running instance's with GET /v1/keys"
        ),
        (KeysAction::List, Some(url)) => {
            let (admin, pools) = admin(url, limits).await?;
            let used = usage::read(&pools.deadpool).await?;
            let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or("-".to_owned(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            };
            writeln!(
                out,
                "{:<36}  {:<20}  {:<16}  {:<14}  {:<20}  {:<20}  last used",
                "id", "name", "scopes", "prefix", "created", "revoked"
            )?;
            for key in admin.ring.keys() {
                let scopes = key.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",");
                writeln!(
                    out,
                    "{:<36}  {:<20}  {:<16}  {:<14}  {:<20}  {:<20}  {}",
                    key.id,
                    key.name.as_str(),
                    scopes,
                    key.prefix,
                    when(key.created_at),
                    when(key.revoked_at),
                    when(used.get(&key.id).copied())
                )?;
            }
            Ok(())
        }
        (KeysAction::Revoke { id }, Some(url)) => {
            if uuid::Uuid::parse_str(&id).is_err() {
                anyhow::bail!("--id `{id}` is not a key id (a UUID from `tidings keys list`)");
            }
            let (admin, _pools) = admin(url, limits).await?;
            let (changed, _) = admin.revoke(&id, &metadata()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            if changed {
                writeln!(out, "revoked {id}; every instance refuses it within a second")?;
            } else {
                writeln!(out, "{id} was already revoked")?;
            }
            Ok(())
        }
    }
}
