//! Digests: what a flushed batch is owed. A batch flushed with at least
//! `min_items` items is owed its digest (a notification whose id derives
//! from the batch, `data.digest` naming the items) and each item its mark
//! (`NotificationDigested`); one flushed with fewer is owed each item's
//! release, delivered on its own. The first item of a batch under
//! `first_item_immediately` is owed its release at once. Each is one
//! command on one notification under the reaction's id, so firing twice
//! changes nothing.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{command_id, Fire, Pending, Reaction, Reactor};
use crate::commands::templates::{TemplateLibrary, TemplateProblem};
use crate::commands::{CommandMetadata, Commands, Target};
use crate::domain::batch::{BatchEvent, Digest, BATCH_TYPE};
use crate::domain::template::{Template, TemplateKey};
use crate::domain::values::{Body, Title, TITLE_MAX_CHARS};
use crate::domain::{
    NewNotification, Notification, NotificationCommand, NotificationEvent, NotificationId,
    Priority, Timestamp,
};
use crate::projections::store::Keyed;
use crate::storage::{error_chain, LoggedEvent};

use cqrs_es::Aggregate as _;

pub const NAME: &str = "digests";

/// What a flushed batch's notification is owed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DigestOrder {
    /// Create the digest; its text rendered from `template` when it has
    /// one (the built-in summary when that fails).
    Create {
        content: Box<NewNotification>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        template: Option<TemplateKey>,
    },
    /// Deliver the item on its own.
    Release { batch_id: String },
    /// Mark the item as carried by `digest_id`.
    Digested {
        batch_id: String,
        digest_id: NotificationId,
    },
}

pub enum Step {
    Flushed {
        batch_id: String,
        items: Vec<NotificationId>,
        digest: Option<Box<Digest>>,
    },
    /// An item released as its batch's first.
    Released { batch_id: String },
}

/// The digest notification of a batch: a summary over its items, the
/// items themselves named in `data.digest`.
pub fn digest_content(
    batch_id: &str,
    items: &[NotificationId],
    digest: &Digest,
) -> NewNotification {
    let count = items.len();
    let noun = digest.category.as_str();
    let mut title = match &digest.group_key {
        Some(g) => format!("{count} new {noun} on {}", g.as_str()),
        None => format!("{count} new {noun}"),
    };
    if title.chars().count() > TITLE_MAX_CHARS {
        title = title.chars().take(TITLE_MAX_CHARS).collect();
    }
    let mut body = format!("Latest: {}", digest.last.title.as_str());
    if !digest.actors.is_empty() {
        let others = digest
            .actor_count
            .saturating_sub(digest.actors.len().min(3));
        let named = digest
            .actors
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        body.push_str(&match others {
            0 => format!("\nFrom {named}"),
            n => format!("\nFrom {named} and {n} more"),
        });
    }
    let item = |i: &crate::domain::batch::ItemRef| serde_json::json!({"id": i.id, "title": i.title.as_str()});
    let mut data = serde_json::Map::new();
    data.insert(
        "digest".into(),
        serde_json::json!({
            "batch_id": batch_id,
            "count": count,
            "items": items,
            "first": item(&digest.first),
            "last": item(&digest.last),
            "actors": digest.actors,
            "actor_count": digest.actor_count,
        }),
    );
    NewNotification {
        recipient: digest.recipient.clone(),
        category: digest.category.clone(),
        title: Title::parse(&title)
            .unwrap_or_else(|_| Title::parse("New notifications").expect("a title")),
        body: Body::parse(&body).unwrap_or_else(|_| Body::parse("").expect("an empty body")),
        data,
        priority: Priority::Normal,
        channels: digest.channels.clone(),
        group_key: digest.group_key.clone(),
        deliver_at: None,
        tenant: digest.tenant.clone(),
        template: None,
        experiment: None,
    }
}

pub struct Digests;

impl Reactor for Digests {
    const NAME: &'static str = NAME;
    type Input = Step;
    type Order = DigestOrder;

    fn read(&self, event: &LoggedEvent) -> Result<Option<Step>, String> {
        if event.aggregate_type == Notification::TYPE {
            if event.event_type != "NotificationAddedToBatch" {
                return Ok(None);
            }
            return Ok(match event.decode::<NotificationEvent>()? {
                NotificationEvent::NotificationAddedToBatch {
                    batch_id,
                    released: true,
                    ..
                } => Some(Step::Released { batch_id }),
                _ => None,
            });
        }
        if event.aggregate_type != BATCH_TYPE || event.event_type != "BatchFlushed" {
            return Ok(None);
        }
        Ok(match event.decode::<BatchEvent>()? {
            BatchEvent::BatchFlushed {
                batch_id,
                items,
                digest,
                ..
            } => Some(Step::Flushed {
                batch_id,
                items,
                digest,
            }),
            _ => None,
        })
    }

    fn keys(&self, step: &Step, event: &LoggedEvent) -> Vec<String> {
        self.new_keys(step, event)
    }

    fn new_keys(&self, step: &Step, event: &LoggedEvent) -> Vec<String> {
        match step {
            Step::Released { .. } => vec![format!("release/{}", event.aggregate_id)],
            Step::Flushed {
                batch_id,
                items,
                digest: Some(_),
            } => std::iter::once(format!("digest/{batch_id}"))
                .chain(items.iter().map(|i| format!("digested/{i}")))
                .collect(),
            Step::Flushed { items, .. } => items.iter().map(|i| format!("release/{i}")).collect(),
        }
    }

    fn react(&self, step: Step, event: &LoggedEvent) -> Vec<Reaction<DigestOrder>> {
        let owe = |id: String, aggregate_id: String, order: DigestOrder| Reaction::Owe {
            id,
            pending: Pending {
                aggregate_id,
                due_at: event.recorded_at,
                urgent: false,
                order,
            },
        };
        match step {
            Step::Released { batch_id } => vec![owe(
                format!("release/{}", event.aggregate_id),
                event.aggregate_id.clone(),
                DigestOrder::Release { batch_id },
            )],
            Step::Flushed {
                batch_id,
                items,
                digest: Some(digest),
            } => {
                let content = digest_content(&batch_id, &items, &digest);
                std::iter::once(owe(
                    format!("digest/{batch_id}"),
                    digest.id.to_string(),
                    DigestOrder::Create {
                        content: Box::new(content),
                        template: digest.template.clone(),
                    },
                ))
                .chain(items.iter().map(|i| {
                    owe(
                        format!("digested/{i}"),
                        i.to_string(),
                        DigestOrder::Digested {
                            batch_id: batch_id.clone(),
                            digest_id: digest.id,
                        },
                    )
                }))
                .collect()
            }
            Step::Flushed {
                batch_id, items, ..
            } => items
                .iter()
                .map(|i| {
                    owe(
                        format!("release/{i}"),
                        i.to_string(),
                        DigestOrder::Release {
                            batch_id: batch_id.clone(),
                        },
                    )
                })
                .collect(),
        }
    }
}

/// The command an order runs on its notification.
fn command(order: &DigestOrder, id: &str, at: Timestamp) -> NotificationCommand {
    match order {
        DigestOrder::Create { content, .. } => NotificationCommand::Create {
            id: NotificationId::parse(id).unwrap_or(NotificationId(uuid::Uuid::nil())),
            content: content.clone(),
            audience: None,
            batchable: false,
            at,
        },
        DigestOrder::Release { batch_id } => NotificationCommand::Release {
            batch_id: batch_id.clone(),
            at,
        },
        DigestOrder::Digested {
            batch_id,
            digest_id,
        } => NotificationCommand::MarkDigested {
            batch_id: batch_id.clone(),
            digest_id: *digest_id,
            at,
        },
    }
}

/// What a digest's template renders with: its `data.digest` (`count`,
/// `items`, `first`, `last`, `actors`, `actor_count`, `batch_id`), its
/// `category` and `group_key`.
pub fn digest_variables(content: &NewNotification) -> crate::domain::Data {
    let mut variables = match content.data.get("digest") {
        Some(serde_json::Value::Object(summary)) => summary.clone(),
        _ => serde_json::Map::new(),
    };
    variables.insert("category".into(), content.category.as_str().into());
    variables.insert(
        "group_key".into(),
        content
            .group_key
            .as_ref()
            .map_or(serde_json::Value::Null, |g| g.as_str().into()),
    );
    variables
}

/// Runs the digests' reactions: the digests as creates, the rest as
/// commands on the items.
pub struct DigestFire {
    pub notifications: Arc<Commands<Notification>>,
    /// What digests of a policy with a template render from.
    pub templates: Arc<TemplateLibrary>,
}

impl DigestFire {
    /// The order's digest, rendered from its template when it has one. A
    /// template that cannot be used (none published, a variable it lacks)
    /// leaves the built-in summary, and `data.digest.template_error` says
    /// why: a digest is never held back by its template. A store that
    /// cannot be read fails the firing (it is retried).
    /// `read`: the templates read so far in this firing (each once).
    async fn rendered(
        &self,
        order: &DigestOrder,
        read: &mut std::collections::HashMap<TemplateKey, Template>,
    ) -> Result<DigestOrder, String> {
        let DigestOrder::Create {
            content,
            template: Some(key),
        } = order
        else {
            return Ok(order.clone());
        };
        let mut content = content.clone();
        let resolved = match read.get(key) {
            Some(template) => Ok(template),
            None => match self.templates.commands.current(key.as_str(), None).await {
                Ok(current) => Ok(&*read.entry(key.clone()).or_insert(current.state)),
                Err(e) => Err(TemplateProblem::Read(e)),
            },
        }
        .and_then(|template| {
            self.templates
                .resolve_in(key, template, None, &digest_variables(&content))
        });
        match resolved {
            Ok(used) => {
                let text = used.default_text();
                content.title = text.title.clone();
                content.body = text.body.clone();
                content.template = Some(Box::new(used));
            }
            // The store is out: the firing is retried, never sent plain.
            Err(TemplateProblem::Read(e)) => return Err(error_chain(&e)),
            Err(why) => {
                tracing::warn!(template = %key, error = %error_chain(&why), "digest template not used");
                if let Some(serde_json::Value::Object(summary)) = content.data.get_mut("digest") {
                    summary.insert("template_error".into(), why.to_string().into());
                }
            }
        }
        Ok(DigestOrder::Create {
            content,
            template: Some(key.clone()),
        })
    }
}

#[async_trait::async_trait]
impl Fire<Digests> for DigestFire {
    async fn fire(
        &self,
        _: &Digests,
        due: &[Keyed<Pending<DigestOrder>>],
        meta: &CommandMetadata,
    ) -> Result<u64, String> {
        let (creates, others): (Vec<_>, Vec<_>) = due
            .iter()
            .partition(|k| matches!(k.row.order, DigestOrder::Create { .. }));
        let targets = |list: &[&Keyed<Pending<DigestOrder>>]| -> Vec<Target> {
            list.iter()
                .map(|k| Target {
                    aggregate_id: k.row.aggregate_id.clone(),
                    command_id: Some(command_id::<Digests>(&k.key)),
                })
                .collect()
        };
        let mut changed = 0;
        if !creates.is_empty() {
            let mut orders = Vec::with_capacity(creates.len());
            let mut read = std::collections::HashMap::new();
            for k in &creates {
                orders.push(self.rendered(&k.row.order, &mut read).await?);
            }
            let outcome = self
                .notifications
                .create_many(
                    &targets(&creates),
                    |i, at| command(&orders[i], &creates[i].row.aggregate_id, at),
                    meta,
                )
                .await
                .map_err(|e| error_chain(&e))?;
            changed += outcome.receipt.changed;
        }
        if !others.is_empty() {
            let receipt = self
                .notifications
                .execute_many(
                    &targets(&others),
                    |i, at| command(&others[i].row.order, &others[i].row.aggregate_id, at),
                    meta,
                )
                .await
                .map_err(|e| error_chain(&e))?;
            changed += receipt.changed;
        }
        Ok(changed)
    }
}
