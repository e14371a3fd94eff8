//! What a send consults and what `GET .../preferences` resolves: the
//! recipient (profile and preferences), the tenant's defaults and the
//! category settings, read from their own streams (never from a read model
//! that could lag: an opt-out counts from the moment it is answered).
//!
//! A send reads one recipient, one category and at most one tenant. The
//! resolution itself is the domain's (`domain::preferences`).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;

use async_trait::async_trait;

use super::latest;
use super::runner::{CommandError, Commands, Current};
use crate::domain::batching::Batching;
use crate::domain::category::CategoryConfig;
use crate::domain::contact::TenantId;
use crate::domain::preferences::{Audience, CategorySettings, Preferences, Resolver, Versioned};
use crate::domain::recipient::Recipient;
use crate::domain::superseding::Superseding;
use crate::domain::tenant::Tenant;
use crate::domain::{Category, NewNotification, Timestamp, UserId};
use crate::storage::{EventLog, Position};

/// A read that failed: an outage, an unreadable event, a backend fault.
pub type ReadError = CommandError<Infallible>;

fn erased<E: std::error::Error>(err: CommandError<E>) -> ReadError {
    err.unless_rejected()
        .unwrap_or_else(|e| CommandError::Internal(format!("a read was refused: {e}").into()))
}

/// The most category events read to list the configured categories.
const CATEGORY_EVENTS_MAX: usize = 100_000;

/// Everything one user's preferences resolve against, as read.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub recipient: Current<Recipient>,
    /// The tenant whose defaults apply, when there is one.
    pub tenant: Option<(TenantId, Current<Tenant>)>,
    /// The settings of the categories read, with their versions.
    pub categories: BTreeMap<Category, (CategorySettings, u64)>,
}

impl Snapshot {
    pub fn resolver(&self) -> Resolver<'_> {
        let recipient = &self.recipient.state;
        Resolver {
            user: Versioned {
                value: &recipient.preferences,
                version: recipient.preferences_version,
            },
            tenant: self.tenant.as_ref().map(|(_, t)| Versioned {
                value: &t.state.defaults,
                version: t.state.version,
            }),
            categories: &self.categories,
        }
    }

    /// The latest position of everything read.
    pub fn position(&self) -> Position {
        let tenant = self.tenant.as_ref().map(|(_, t)| t.position);
        self.recipient
            .position
            .max(tenant.unwrap_or(Position::START))
    }
}

/// Reads recipients, tenants and categories.
pub struct AudienceReader {
    pub recipients: Arc<Commands<Recipient>>,
    pub categories: Arc<Commands<CategoryConfig>>,
    pub tenants: Arc<Commands<Tenant>>,
    /// Each category's batching policy.
    pub batching: Arc<Commands<Batching>>,
    pub log: Arc<dyn EventLog>,
}

impl AudienceReader {
    /// `user` as of `until` (None: now), with the tenant's defaults (the
    /// given tenant, else the profile's) and every category configured by
    /// then.
    pub async fn user(
        &self,
        user: &UserId,
        tenant: Option<&TenantId>,
        until: Option<(Position, Timestamp)>,
    ) -> Result<Snapshot, ReadError> {
        let recipient = match until {
            None => self.now::<Recipient>(user.as_str()).await?,
            Some(_) => self
                .recipients
                .current(user.as_str(), until)
                .await
                .map_err(erased)?,
        };
        let tenant = self.tenant(&recipient, tenant, until).await?;
        let categories = self.configured(until).await?;
        Ok(Snapshot {
            recipient,
            tenant,
            categories,
        })
    }

    /// Category `category`'s batching policy now.
    pub async fn batching_of(&self, category: &Category) -> Result<Current<Batching>, ReadError> {
        self.now::<Batching>(category.as_str()).await
    }

    /// The state of one stream now, from its last events.
    async fn now<A>(&self, id: &str) -> Result<Current<A>, ReadError>
    where
        A: cqrs_es::Aggregate + Superseding<Event = <A as cqrs_es::Aggregate>::Event>,
    {
        let id = id.to_owned();
        let mut states = latest::states::<A>(&*self.log, std::slice::from_ref(&id)).await?;
        match states.remove(&id) {
            Some(Ok(current)) => Ok(current),
            Some(Err(unreadable)) => Err(CommandError::Unreadable(unreadable)),
            None => Err(CommandError::Internal(
                format!("the read of {} `{id}` answered nothing", A::TYPE).into(),
            )),
        }
    }

    /// What a send to `user` in `category` consults, now.
    pub async fn for_send(
        &self,
        user: &UserId,
        category: &Category,
        tenant: Option<&TenantId>,
    ) -> Result<Snapshot, ReadError> {
        let (recipient, settings) = tokio::join!(
            self.now::<Recipient>(user.as_str()),
            self.now::<CategoryConfig>(category.as_str()),
        );
        let (recipient, settings) = (recipient?, settings?);
        let tenant = self.tenant(&recipient, tenant, None).await?;
        let mut categories = BTreeMap::new();
        if let Some(s) = settings.state.settings {
            categories.insert(category.clone(), (s, settings.state.version));
        }
        Ok(Snapshot {
            recipient,
            tenant,
            categories,
        })
    }

    async fn tenant(
        &self,
        recipient: &Current<Recipient>,
        tenant: Option<&TenantId>,
        until: Option<(Position, Timestamp)>,
    ) -> Result<Option<(TenantId, Current<Tenant>)>, ReadError> {
        let Some(id) = tenant.or(recipient.state.profile.tenant.as_ref()) else {
            return Ok(None);
        };
        let current = match until {
            None => self.now::<Tenant>(id.as_str()).await?,
            Some(_) => self
                .tenants
                .current(id.as_str(), until)
                .await
                .map_err(erased)?,
        };
        Ok(Some((id.clone(), current)))
    }

    /// Every category configured by `until`, with its settings then.
    pub async fn configured(
        &self,
        until: Option<(Position, Timestamp)>,
    ) -> Result<BTreeMap<Category, (CategorySettings, u64)>, ReadError> {
        let Some(until) = until else {
            // A category event this release cannot read leaves that
            // category unconfigured here; a send to it reads its stream
            // and says why.
            let states = latest::every::<CategoryConfig>(&*self.log, CATEGORY_EVENTS_MAX).await?;
            return Ok(configured(
                states
                    .into_iter()
                    .filter_map(|(name, read)| Some((name, read.ok()?.state))),
            ));
        };
        use cqrs_es::Aggregate as _;
        let events = self
            .log
            .of_type(CategoryConfig::TYPE, CATEGORY_EVENTS_MAX)
            .await?;
        let (position, recorded_by) = until;
        let mut folded: BTreeMap<String, CategoryConfig> = BTreeMap::new();
        for event in events {
            if event.position > position || event.recorded_at > recorded_by {
                continue;
            }
            if let Ok(e) = event.decode() {
                folded
                    .entry(event.aggregate_id.clone())
                    .or_default()
                    .apply(e);
            }
        }
        Ok(configured(folded))
    }
}

/// The categories among `states` that have settings.
fn configured(
    states: impl IntoIterator<Item = (String, CategoryConfig)>,
) -> BTreeMap<Category, (CategorySettings, u64)> {
    states
        .into_iter()
        .filter_map(|(name, c)| {
            let category = Category::parse(&name).ok()?;
            Some((category, (c.settings?, c.version)))
        })
        .collect()
}

fn audience_of(
    recipient: Recipient,
    tenant: Option<(Preferences, u64)>,
    category: Option<(CategorySettings, u64)>,
    batching: &Current<Batching>,
) -> Audience {
    Audience {
        batching: batching
            .state
            .policy
            .clone()
            .map(|p| (p, batching.state.version)),
        profile: (recipient.version > 0).then_some((recipient.profile, recipient.version)),
        preferences: recipient.preferences,
        preferences_version: recipient.preferences_version,
        tenant,
        category,
    }
}

impl AudienceReader {
    /// What a send in `category` consults for each of `users`, in a few
    /// reads: every recipient's stream in one, the category's, and each
    /// tenant's once. None for a recipient whose history holds an event
    /// this release cannot read (logged): the others go on.
    pub async fn for_many(
        &self,
        users: &[UserId],
        category: &Category,
        tenant: Option<&TenantId>,
    ) -> Result<Vec<Option<Audience>>, ReadError> {
        let ids: Vec<String> = users.iter().map(|u| u.as_str().to_owned()).collect();
        let (recipients, settings, batching) = tokio::join!(
            latest::states::<Recipient>(&*self.log, &ids),
            self.now::<CategoryConfig>(category.as_str()),
            self.batching_of(category),
        );
        let (recipients, settings, batching) = (recipients?, settings?, batching?);
        let category_settings = settings.state.settings.map(|s| (s, settings.state.version));
        let mut tenants: HashMap<TenantId, Option<(Preferences, u64)>> = HashMap::new();
        let mut audiences = Vec::with_capacity(users.len());
        for user in users {
            let recipient = match recipients.get(user.as_str()) {
                Some(Ok(current)) => current.state.clone(),
                Some(Err(unreadable)) => {
                    tracing::warn!(%unreadable, "a recipient's preferences cannot be read; the send passes them over");
                    audiences.push(None);
                    continue;
                }
                None => Recipient::default(),
            };
            let tenant_id = tenant.or(recipient.profile.tenant.as_ref()).cloned();
            let tenant_defaults = match tenant_id {
                None => None,
                Some(id) => match tenants.get(&id) {
                    Some(known) => known.clone(),
                    None => {
                        let t = self.now::<Tenant>(id.as_str()).await?;
                        let defaults = Some((t.state.defaults, t.state.version));
                        tenants.insert(id, defaults.clone());
                        defaults
                    }
                },
            };
            audiences.push(Some(audience_of(
                recipient,
                tenant_defaults,
                category_settings.clone(),
                &batching,
            )));
        }
        Ok(audiences)
    }
}

/// The domain service the notification aggregate consults when it is
/// created: the audience of the new notification.
#[async_trait]
pub trait AudienceLookup: Send + Sync {
    async fn audience(&self, content: &NewNotification) -> Result<Audience, ReadError>;
}

#[async_trait]
impl AudienceLookup for AudienceReader {
    async fn audience(&self, content: &NewNotification) -> Result<Audience, ReadError> {
        let (snapshot, batching) = tokio::join!(
            self.for_send(
                &content.recipient,
                &content.category,
                content.tenant.as_ref(),
            ),
            self.batching_of(&content.category),
        );
        let (snapshot, batching) = (snapshot?, batching?);
        Ok(audience_of(
            snapshot.recipient.state,
            snapshot
                .tenant
                .map(|(_, t)| (t.state.defaults, t.state.version)),
            snapshot.categories.into_iter().next().map(|(_, s)| s),
            &batching,
        ))
    }
}

/// No preferences anywhere: every channel on (tests of other parts, and
/// tools that replay without a recipient store).
pub struct Everyone;

#[async_trait]
impl AudienceLookup for Everyone {
    async fn audience(&self, _: &NewNotification) -> Result<Audience, ReadError> {
        Ok(Audience::default())
    }
}
