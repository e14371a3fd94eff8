//! Sends: how far each send to many has got. One row per send, under its
//! id, sorted by when it was requested.

use serde::{Deserialize, Serialize};

use super::store::{Fold, Rows};
use crate::domain::send::{SendEvent, SendTarget};
use crate::domain::Timestamp;
use crate::storage::LoggedEvent;

pub const NAME: &str = "sends";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The topic, for a send to one.
    pub topic: Option<String>,
    /// Recipients it is expected to reach: the list's length, or the
    /// topic's subscribers when it was requested; when done, those it did.
    pub total: u64,
    pub created: u64,
    pub suppressed: u64,
    /// Passed over: their preferences could not be read.
    #[serde(default)]
    pub skipped: u64,
    pub pages: u64,
    pub done: bool,
    pub requested_at: Timestamp,
    pub done_at: Option<Timestamp>,
}

pub struct Sends;

impl Fold for Sends {
    const NAME: &'static str = NAME;
    type Input = SendEvent;
    type Row = Row;

    fn read(&self, event: &LoggedEvent) -> Result<Option<SendEvent>, String> {
        if event.aggregate_type != "Send" {
            return Ok(None);
        }
        event.decode().map(Some)
    }

    fn keys(&self, _: &SendEvent, event: &LoggedEvent) -> Vec<String> {
        vec![event.aggregate_id.clone()]
    }

    fn new_keys(&self, input: &SendEvent, event: &LoggedEvent) -> Vec<String> {
        match input {
            SendEvent::SendRequested { .. } => vec![event.aggregate_id.clone()],
            SendEvent::SendPageFannedOut { .. } => Vec::new(),
        }
    }

    fn fold(
        &self,
        input: SendEvent,
        event: &LoggedEvent,
        rows: &mut Rows<Row>,
    ) -> Result<(), String> {
        let key = &event.aggregate_id;
        match input {
            SendEvent::SendRequested {
                target,
                expected,
                requested_at,
                ..
            } => {
                let row = Row {
                    topic: match target {
                        SendTarget::Topic(t) => Some(t.to_string()),
                        SendTarget::Recipients(_) => None,
                    },
                    total: expected,
                    created: 0,
                    suppressed: 0,
                    skipped: 0,
                    pages: 0,
                    done: false,
                    requested_at,
                    done_at: None,
                };
                rows.put(key, requested_at.timestamp_millis(), row);
            }
            SendEvent::SendPageFannedOut {
                page,
                fanned_out_at,
            } => {
                let Some(mut row) = rows.get(key).cloned() else {
                    return Err(format!("a page of send {key} follows no SendRequested"));
                };
                row.pages = page.page + 1;
                row.created += page.created;
                row.suppressed += page.suppressed;
                row.skipped += page.skipped;
                if page.done {
                    row.done = true;
                    row.done_at = Some(fanned_out_at);
                    row.total = row.created + row.suppressed + row.skipped;
                }
                let sort = row.requested_at.timestamp_millis();
                rows.put(key, sort, row);
            }
        }
        Ok(())
    }
}
