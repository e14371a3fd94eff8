//! When each key was last used, across instances (PostgreSQL): every
//! instance writes the times its ring saw change every `FLUSH`, keeping the
//! newest (migrations/0011). Lists merge these with what the ring knows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::watch;
use tracing::warn;

use super::keys::{KeyRing, Source};
use crate::domain::Timestamp;
use crate::storage::StorageError;

/// How often an instance writes the last-used times that changed.
pub const FLUSH: Duration = Duration::from_secs(5);

const UPSERT: &str = "
INSERT INTO api_key_usage (key_id, last_used_at)
SELECT * FROM unnest($1::text[], $2::timestamptz[])
ON CONFLICT (key_id) DO UPDATE
   SET last_used_at = GREATEST(api_key_usage.last_used_at, EXCLUDED.last_used_at)";

/// Every key's last use, as the instances recorded it.
pub async fn read(pool: &Pool) -> Result<HashMap<String, Timestamp>, StorageError> {
    let client = pool.get().await?;
    let rows = client
        .query("SELECT key_id, last_used_at FROM api_key_usage", &[])
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(StorageError::from)
}

/// Writes the changed times every `FLUSH` until `shutdown`, and once more then.
pub async fn flush_until(ring: Arc<KeyRing>, pool: Pool, mut shutdown: watch::Receiver<bool>) {
    let mut written: HashMap<String, Timestamp> = HashMap::new();
    let mut tick = tokio::time::interval(FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = shutdown.changed() => true,
            _ = tick.tick() => false,
        };
        let changed: Vec<(String, Timestamp)> = ring
            .keys()
            .iter()
            .filter(|k| k.source == Source::Store)
            .filter_map(|k| Some((k.id.clone(), k.last_used()?)))
            .filter(|(id, at)| written.get(id) != Some(at))
            .collect();
        if !changed.is_empty() {
            let (ids, times): (Vec<String>, Vec<Timestamp>) = changed.iter().cloned().unzip();
            let result = async {
                let client = pool.get().await?;
                client.execute(UPSERT, &[&ids, &times]).await?;
                Ok::<_, StorageError>(())
            }
            .await;
            match result {
                Ok(()) => written.extend(changed),
                Err(e) => {
                    warn!(error = %e, "recording when API keys were last used failed; retrying")
                }
            }
        }
        if stopping {
            return;
        }
    }
}
