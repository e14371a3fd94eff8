//! Outcomes: what each experiment's users were assigned and what became of
//! the notifications sent under a variant. One row per assignment
//! (`a/{assignment stream}`) and one per exposed notification
//! (`n/{notification id}`, with the first time it was delivered, seen,
//! read and clicked), all of an experiment in its sort range, ordered by
//! time. The results (`GET /v1/experiments/{id}/results`) are computed
//! from these rows: a time (`as_of`) filters them, and a metric defined
//! later (clicked within an hour) is answered over the whole history,
//! since the rows keep the times. Each change is announced on
//! `experiments:{id}`.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::store::{Fold, Rows};
use crate::domain::experiment::{AssignmentEvent, ExperimentId, ASSIGNMENT_TYPE};
use crate::domain::{NotificationEvent, NotificationId, Timestamp};
use crate::storage::LoggedEvent;

pub const NAME: &str = "outcomes";

/// Bits of a row's sort that hold its time (seconds).
const TIME_BITS: u32 = 40;
pub const RANGE: i64 = 1 << TIME_BITS;

/// The sort range of `experiment`'s rows: `[start, start + RANGE)`.
pub fn range_of(experiment: &str) -> i64 {
    let digest = Sha256::digest(experiment.as_bytes());
    let prefix = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) >> 9;
    i64::from(prefix) << TIME_BITS
}

fn sort_of(experiment: &str, at: Timestamp) -> i64 {
    range_of(experiment) | at.timestamp().clamp(0, RANGE - 1)
}

/// The topic an experiment's outcomes are announced on.
pub fn topic_of(experiment: &ExperimentId) -> String {
    crate::streams::updates::Topic::Experiments(experiment.clone()).to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Row {
    /// A user's assignment.
    Assigned {
        experiment: ExperimentId,
        user: String,
        /// None: held out.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        variant: Option<String>,
        weights_version: u64,
        assigned_at: Timestamp,
    },
    /// A notification sent under a variant, and what became of it.
    Exposed {
        experiment: ExperimentId,
        variant: String,
        notification: NotificationId,
        exposed_at: Timestamp,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delivered_at: Option<Timestamp>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seen_at: Option<Timestamp>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        read_at: Option<Timestamp>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clicked_at: Option<Timestamp>,
    },
}

impl Row {
    pub fn experiment(&self) -> &ExperimentId {
        match self {
            Row::Assigned { experiment, .. } | Row::Exposed { experiment, .. } => experiment,
        }
    }
}

/// An outcome a notification can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Seen,
    Read,
    Clicked,
}

pub enum Input {
    Assigned(AssignmentEvent),
    Exposed {
        experiment: ExperimentId,
        variant: String,
        at: Timestamp,
    },
    Reached(Outcome, Timestamp),
}

fn render(_: &str, row: &Row) -> Option<String> {
    serde_json::to_string(row).ok()
}

pub struct Outcomes;

impl Fold for Outcomes {
    const NAME: &'static str = NAME;
    type Input = Input;
    type Row = Row;

    fn read(&self, event: &LoggedEvent) -> Result<Option<Input>, String> {
        if event.aggregate_type == ASSIGNMENT_TYPE {
            return event
                .decode::<AssignmentEvent>()
                .map(|e| Some(Input::Assigned(e)));
        }
        if event.aggregate_type != "Notification"
            || !matches!(
                event.event_type.as_str(),
                "NotificationExposed"
                    | "NotificationDelivered"
                    | "NotificationSeen"
                    | "NotificationRead"
                    | "NotificationClicked"
            )
        {
            return Ok(None);
        }
        use NotificationEvent as E;
        Ok(match event.decode::<NotificationEvent>()? {
            E::NotificationExposed {
                experiment,
                variant,
                exposed_at,
            } => Some(Input::Exposed {
                experiment,
                variant: variant.as_str().to_owned(),
                at: exposed_at,
            }),
            E::NotificationDelivered { delivered_at, .. } => {
                Some(Input::Reached(Outcome::Delivered, delivered_at))
            }
            E::NotificationSeen { seen_at } => Some(Input::Reached(Outcome::Seen, seen_at)),
            E::NotificationRead { read_at } => Some(Input::Reached(Outcome::Read, read_at)),
            E::NotificationClicked { clicked_at } => {
                Some(Input::Reached(Outcome::Clicked, clicked_at))
            }
            _ => None,
        })
    }

    fn keys(&self, input: &Input, event: &LoggedEvent) -> Vec<String> {
        match input {
            Input::Assigned(_) => vec![format!("a/{}", event.aggregate_id)],
            Input::Exposed { .. } | Input::Reached(..) => vec![format!("n/{}", event.aggregate_id)],
        }
    }

    fn new_keys(&self, input: &Input, event: &LoggedEvent) -> Vec<String> {
        match input {
            // An assignment stream holds one event; an exposure starts its
            // notification's row.
            Input::Assigned(_) | Input::Exposed { .. } => self.keys(input, event),
            Input::Reached(..) => Vec::new(),
        }
    }

    fn fold(&self, input: Input, event: &LoggedEvent, rows: &mut Rows<Row>) -> Result<(), String> {
        let (key, row, kind) = match input {
            Input::Assigned(AssignmentEvent::VariantAssigned {
                experiment,
                user,
                variant,
                weights_version,
                assigned_at,
            }) => (
                format!("a/{}", event.aggregate_id),
                Row::Assigned {
                    experiment,
                    user: user.as_str().to_owned(),
                    variant: variant.map(|v| v.as_str().to_owned()),
                    weights_version,
                    assigned_at,
                },
                "assigned",
            ),
            Input::Exposed {
                experiment,
                variant,
                at,
            } => {
                let notification = NotificationId::parse(&event.aggregate_id).map_err(|e| {
                    format!("an exposure of notification `{}`: {e}", event.aggregate_id)
                })?;
                (
                    format!("n/{}", event.aggregate_id),
                    Row::Exposed {
                        experiment,
                        variant,
                        notification,
                        exposed_at: at,
                        delivered_at: None,
                        seen_at: None,
                        read_at: None,
                        clicked_at: None,
                    },
                    "exposed",
                )
            }
            Input::Reached(outcome, at) => {
                let key = format!("n/{}", event.aggregate_id);
                // Not sent under an experiment: nothing to track.
                let Some(mut row) = rows.get(&key).cloned() else {
                    return Ok(());
                };
                if let Row::Exposed {
                    delivered_at,
                    seen_at,
                    read_at,
                    clicked_at,
                    ..
                } = &mut row
                {
                    let slot = match outcome {
                        Outcome::Delivered => delivered_at,
                        Outcome::Seen => seen_at,
                        Outcome::Read => read_at,
                        Outcome::Clicked => clicked_at,
                    };
                    // The first time counts.
                    if slot.is_some() {
                        return Ok(());
                    }
                    *slot = Some(at);
                }
                (key, row, "outcome")
            }
        };
        let experiment = row.experiment().clone();
        let sort = match &row {
            Row::Assigned { assigned_at, .. } => sort_of(experiment.as_str(), *assigned_at),
            Row::Exposed { exposed_at, .. } => sort_of(experiment.as_str(), *exposed_at),
        };
        rows.put(&key, sort, row);
        rows.announce_row(topic_of(&experiment), kind, &key, render);
        Ok(())
    }
}
