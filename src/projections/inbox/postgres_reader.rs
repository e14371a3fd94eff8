//! Queries over the PostgreSQL inbox, through the `inbox_live` view (the
//! live version's table): pages by keyset on the inbox position, counts
//! served by partial indexes.

use async_trait::async_trait;
use tokio_postgres::types::ToSql;

use super::postgres::{to_row, PostgresInbox, ROW_COLUMNS};
use super::{cut_page, InboxPage, InboxQuery, InboxReader, InboxRow, ReadFilter, Selection};
use crate::domain::{NotificationId, UserId};
use crate::storage::StorageError;

#[async_trait]
impl InboxReader for PostgresInbox {
    async fn page(&self, q: &InboxQuery) -> Result<InboxPage, StorageError> {
        let client = self.pool.get().await?;
        let recipient = q.recipient.as_str();
        let limit = q.limit as i64 + 1;
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&recipient, &q.archived, &limit];
        let mut sql = format!(
            "SELECT {ROW_COLUMNS} FROM inbox_live
              WHERE recipient = $1 AND in_inbox AND archived = $2"
        );
        let before = q.before.map(|p| (p.tx, p.seq));
        if let Some((tx, seq)) = &before {
            params.push(tx);
            params.push(seq);
            sql.push_str(&format!(
                " AND (inbox_tx, inbox_seq) < (${}, ${})",
                params.len() - 1,
                params.len()
            ));
        }
        let read = q.status.map(|s| s == ReadFilter::Read);
        if let Some(read) = &read {
            params.push(read);
            sql.push_str(&format!(" AND read = ${}", params.len()));
        }
        let category = q.category.as_ref().map(|c| c.as_str());
        if let Some(category) = &category {
            params.push(category);
            sql.push_str(&format!(" AND category = ${}", params.len()));
        }
        // The tenant is in the stored state only: within one recipient's
        // rows (by the recipient index) that is a filter, not a scan.
        let tenant = q.tenant.as_ref().map(|t| t.as_str());
        if let Some(tenant) = &tenant {
            params.push(tenant);
            sql.push_str(&format!(
                " AND state->'content'->>'tenant' = ${}",
                params.len()
            ));
        }
        sql.push_str(" ORDER BY inbox_tx DESC, inbox_seq DESC LIMIT $3");
        let items = client
            .query(&sql, &params)
            .await?
            .iter()
            .map(to_row)
            .collect::<Result<Vec<_>, _>>()?;
        let counts = client
            .query_one(
                "SELECT count(*) FILTER (WHERE NOT read), count(*) FILTER (WHERE NOT seen)
                   FROM inbox_live
                  WHERE recipient = $1 AND in_inbox AND NOT archived AND (NOT read OR NOT seen)",
                &[&recipient],
            )
            .await?;
        let (items, next) = cut_page(items, q.limit);
        Ok(InboxPage {
            items,
            next,
            unread_count: counts.try_get::<_, i64>(0)? as u64,
            unseen_count: counts.try_get::<_, i64>(1)? as u64,
        })
    }

    async fn get(&self, id: NotificationId) -> Result<Option<InboxRow>, StorageError> {
        let client = self.pool.get().await?;
        let sql = format!("SELECT {ROW_COLUMNS} FROM inbox_live WHERE id = $1");
        client
            .query_opt(&sql, &[&id.0])
            .await?
            .as_ref()
            .map(to_row)
            .transpose()
    }

    async fn select(&self, s: &Selection) -> Result<Vec<InboxRow>, StorageError> {
        let client = self.pool.get().await?;
        let recipient = s.recipient.as_str();
        let limit = s.limit as i64 + 1;
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&recipient, &limit];
        let mut sql =
            format!("SELECT {ROW_COLUMNS} FROM inbox_live WHERE recipient = $1 AND in_inbox");
        let read = s.status.map(|s| s == ReadFilter::Read);
        if let Some(read) = &read {
            params.push(read);
            sql.push_str(&format!(" AND read = ${}", params.len()));
        }
        let category = s.category.as_ref().map(|c| c.as_str());
        if let Some(category) = &category {
            params.push(category);
            sql.push_str(&format!(" AND category = ${}", params.len()));
        }
        let tenant = s.tenant.as_ref().map(|t| t.as_str());
        if let Some(tenant) = &tenant {
            params.push(tenant);
            sql.push_str(&format!(
                " AND state->'content'->>'tenant' = ${}",
                params.len()
            ));
        }
        if let Some(before) = &s.created_before {
            params.push(before);
            sql.push_str(&format!(
                " AND (state->>'created_at')::timestamptz < ${}",
                params.len()
            ));
        }
        sql.push_str(" ORDER BY inbox_tx, inbox_seq LIMIT $2");
        let rows = client.query(&sql, &params).await?;
        let rows = rows.iter().map(to_row).collect::<Result<Vec<_>, _>>()?;
        // The stored state decides, as in memory (and the recipient's rows only).
        Ok(rows.into_iter().filter(|r| s.matches(r)).collect())
    }

    async fn unread_ids(&self, recipient: &UserId) -> Result<Vec<NotificationId>, StorageError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id FROM inbox_live
                  WHERE recipient = $1 AND in_inbox AND NOT read
                  ORDER BY inbox_tx, inbox_seq",
                &[&recipient.as_str()],
            )
            .await?;
        rows.iter()
            .map(|r| Ok(NotificationId(r.try_get("id")?)))
            .collect()
    }
}
