//! Fan-out: a send to many reaches its recipients a page at a time. The
//! reactor owes the next page of each send (under `{send}:{page}`); the
//! page's command on the send runs the fan-out (`FanOutWorker`, the send's
//! domain service) and records the page. Memory stays one page whatever
//! the topic's size; a crash or a failover resumes at the first page not
//! recorded, and a page run twice creates nothing twice: each recipient's
//! notification id derives from the send and the recipient.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Commanding, Pending, Reaction, Reactor};
use crate::commands::aggregate::PageFanner;
use crate::commands::audience::AudienceReader;
use crate::commands::metadata::{ACTOR, ACTOR_NAME, CORRELATION_ID};
use crate::commands::{CommandMetadata, Commands, Target};
use crate::domain::notification::Lifecycle;
use crate::domain::send::{notification_id, Broadcast, Page, SendCommand, SendEvent, SendTarget};
use crate::domain::topic::membership_id;
use crate::domain::{NewNotification, Notification, NotificationCommand, Timestamp, UserId};
use crate::projections::engine::ProjectorHandle;
use crate::projections::store::RowReader;
use crate::projections::topics::{self, Row as TopicRow};
use crate::storage::{error_chain, EventLog, LoggedEvent};

pub const NAME: &str = "fanout";

/// Recipients per page: one read of their preferences, one append of
/// their notifications.
pub const PAGE: usize = 500;

/// What the fan-out reads of a send event.
pub enum Step {
    Requested,
    Page { page: u64, done: bool },
}

fn reaction(send: &str, page: u64) -> String {
    format!("{send}:{page}")
}

pub struct FanOut;

impl Reactor for FanOut {
    const NAME: &'static str = NAME;
    type Input = Step;
    /// The page owed.
    type Order = u64;

    fn read(&self, event: &LoggedEvent) -> Result<Option<Step>, String> {
        if event.aggregate_type != "Send" {
            return Ok(None);
        }
        Ok(match event.decode::<SendEvent>()? {
            SendEvent::SendRequested { .. } => Some(Step::Requested),
            SendEvent::SendPageFannedOut { page, .. } => Some(Step::Page {
                page: page.page,
                done: page.done,
            }),
        })
    }

    fn keys(&self, step: &Step, event: &LoggedEvent) -> Vec<String> {
        let id = &event.aggregate_id;
        match step {
            Step::Requested => vec![reaction(id, 0)],
            Step::Page { page, .. } => vec![reaction(id, *page), reaction(id, page + 1)],
        }
    }

    fn new_keys(&self, step: &Step, event: &LoggedEvent) -> Vec<String> {
        let id = &event.aggregate_id;
        match step {
            Step::Requested => vec![reaction(id, 0)],
            Step::Page { page, .. } => vec![reaction(id, page + 1)],
        }
    }

    fn react(&self, step: Step, event: &LoggedEvent) -> Vec<Reaction<u64>> {
        let id = &event.aggregate_id;
        let owe = |page: u64| Reaction::Owe {
            id: reaction(id, page),
            pending: Pending {
                aggregate_id: id.clone(),
                due_at: event.recorded_at,
                urgent: true,
                order: page,
            },
        };
        match step {
            Step::Requested => vec![owe(0)],
            Step::Page { page, done } => {
                let mut reactions = vec![Reaction::Settle {
                    id: reaction(id, page),
                }];
                if !done {
                    reactions.push(owe(page + 1));
                }
                reactions
            }
        }
    }
}

impl Commanding for FanOut {
    type Target = Broadcast;

    fn command(&self, pending: &Pending<u64>, at: Timestamp) -> SendCommand {
        SendCommand::FanOut {
            page: pending.order,
            at,
        }
    }
}

/// Does a page: lists its recipients, reads their preferences, creates
/// their notifications in one append.
pub struct FanOutWorker {
    pub notifications: Arc<Commands<Notification>>,
    pub audience: Arc<AudienceReader>,
    pub members: Arc<dyn RowReader<TopicRow>>,
    /// The topics projection: a topic send's first page waits for it to
    /// have folded every subscription made before the send.
    pub topics: ProjectorHandle,
    pub log: Arc<dyn EventLog>,
    /// The longest that wait.
    pub wait: Duration,
    /// Enrolling a page's recipients in the send's experiment.
    pub experiments: Arc<crate::commands::experiments::ExperimentLab>,
}

impl FanOutWorker {
    /// The recipients of page `page` of `send`, and whether none are left.
    async fn recipients(&self, send: &Broadcast, page: u64) -> Result<(Vec<UserId>, bool), String> {
        match send.target.as_ref().ok_or("the send names no recipients")? {
            SendTarget::Recipients(list) => {
                let start = match &send.through {
                    Some(last) => list
                        .iter()
                        .position(|u| u == last)
                        .map_or(list.len(), |i| i + 1),
                    None => 0,
                };
                let end = (start + PAGE).min(list.len());
                Ok((list[start..end].to_vec(), end == list.len()))
            }
            SendTarget::Topic(topic) => {
                if page == 0 {
                    let requested = self
                        .log
                        .position_of("Send", &send.id, 1)
                        .await
                        .map_err(|e| error_chain(&e))?
                        .ok_or("the send's request is not in the log")?;
                    if !self.topics.wait_for(requested, self.wait).await {
                        return Err("the topics projection has not reached the send yet".into());
                    }
                }
                let sort = topics::sort_of(topic);
                let prefix = format!("{}/", topic.as_str());
                let mut after = send
                    .through
                    .as_ref()
                    .map(|u| (sort, membership_id(topic, u)));
                // Another topic whose name hashes alike shares the range: its
                // rows are told apart by their keys, and read past until this
                // topic's come (or the range ends).
                loop {
                    let rows = self
                        .members
                        .range(sort, sort + 1, after.clone(), PAGE)
                        .await
                        .map_err(|e| error_chain(&e))?;
                    let exhausted = rows.len() < PAGE;
                    after = rows.last().map(|k| (k.sort, k.key.clone()));
                    let users: Vec<UserId> = rows
                        .into_iter()
                        .filter(|k| k.key.starts_with(&prefix))
                        .filter_map(|k| match k.row {
                            TopicRow::Member { user, .. } => Some(user),
                            TopicRow::Count { .. } => None,
                        })
                        .collect();
                    if !users.is_empty() || exhausted {
                        return Ok((users, exhausted));
                    }
                }
            }
        }
    }

    /// Who the send's notifications are from: who asked for the send.
    async fn metadata(&self, send: &Broadcast) -> Result<CommandMetadata, String> {
        let first = self
            .log
            .stream("Send", &send.id, 0, 1)
            .await
            .map_err(|e| error_chain(&e))?;
        let meta = first.first().map(|e| e.metadata.clone());
        let get = |k: &str| {
            meta.as_ref()
                .and_then(|m| m.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        Ok(CommandMetadata {
            request_id: uuid::Uuid::now_v7().to_string(),
            correlation_id: get(CORRELATION_ID).unwrap_or_else(|| send.id.clone()),
            causation_id: Some(format!("send:{}", send.id)),
            actor: get(ACTOR).unwrap_or_else(|| format!("tidings:{NAME}")),
            actor_name: get(ACTOR_NAME),
            ..CommandMetadata::default()
        })
    }
}

#[async_trait]
impl PageFanner for FanOutWorker {
    async fn fan_out(&self, send: &Broadcast, page: u64) -> Result<Page, String> {
        let done = self.page(send, page).await;
        if let Err(error) = &done {
            tracing::warn!(send = %send.id, page, error, "a fan-out page failed; it is fired again");
        }
        done
    }
}

impl FanOutWorker {
    async fn page(&self, send: &Broadcast, page: u64) -> Result<Page, String> {
        let content = send.content.as_ref().ok_or("the send has no content")?;
        let (listed, done) = self.recipients(send, page).await?;
        let read = self
            .audience
            .for_many(&listed, &content.category, content.tenant.as_ref())
            .await
            .map_err(|e| error_chain(&e))?;
        // A recipient whose preferences cannot be read is passed over (and
        // logged), not sent to against them, and not a stop for the others.
        let skipped = read.iter().filter(|a| a.is_none()).count() as u64;
        let (recipients, audiences): (Vec<UserId>, Vec<_>) = listed
            .iter()
            .cloned()
            .zip(read)
            .filter_map(|(u, a)| a.map(|a| (u, a)))
            .unzip();
        let ids: Vec<_> = recipients
            .iter()
            .map(|u| notification_id(&send.id, u))
            .collect();
        let meta = self.metadata(send).await?;
        // Under an experiment: each recipient's variant, drawn and recorded
        // for the page at once, and that variant's text.
        let enrolled = match &content.experiment {
            None => None,
            Some(plan) => Some(
                self.experiments
                    .enroll_page(&plan.id, &recipients, &meta)
                    .await?,
            ),
        };
        let contents: Vec<NewNotification> = recipients
            .iter()
            .enumerate()
            .map(|(i, user)| {
                let mut one = content.for_recipient(user.clone());
                if let (Some(plan), Some(enrolled)) = (&content.experiment, &enrolled) {
                    if let Some((recorded, text)) = enrolled.recipients.get(i) {
                        if let Some((_, arm)) = text
                            .as_ref()
                            .and_then(|name| plan.texts.iter().find(|(n, _)| n == name))
                        {
                            arm.apply(&mut one);
                        }
                        one.experiment = recorded.clone();
                    }
                }
                one
            })
            .collect();
        let create = |i: usize, at: Timestamp| NotificationCommand::Create {
            id: ids[i],
            content: Box::new(contents[i].clone()),
            audience: Some(Box::new(audiences[i].clone())),
            batchable: true,
            at,
        };
        let targets: Vec<Target> = ids
            .iter()
            .map(|id| Target {
                aggregate_id: id.to_string(),
                command_id: None,
            })
            .collect();
        let outcome = self
            .notifications
            .create_many(&targets, create, &meta)
            .await
            .map_err(|e| error_chain(&e))?;
        // Counted from what the log holds: a page run again after a crash
        // finds the notifications its first run created, decided then.
        let suppressed = outcome
            .states
            .iter()
            .filter(|(_, n)| n.lifecycle == Lifecycle::Suppressed)
            .count() as u64;
        let created = outcome.states.len() as u64 - suppressed;
        // A notification whose history cannot be read is neither.
        let skipped = skipped + (recipients.len() - outcome.states.len()) as u64;
        Ok(Page {
            page,
            through: listed.last().cloned().or_else(|| send.through.clone()),
            created,
            suppressed,
            skipped,
            done,
        })
    }
}
