//! The aggregates as cqrs-es sees them: thin adapters over the pure rules in
//! `domain` (`notification`, `api_key`, `recipient`, `category`, `tenant`). Each decides every
//! event first, so a refused command writes nothing to the sink.

use std::sync::Arc;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};

use super::audience::AudienceLookup;
use super::runner::CommandError;
use crate::domain::api_key::KEY_EVENT_VERSION;
use crate::domain::batching::{
    Batching, BatchingCommand, BatchingError, BatchingEvent, BATCHING_EVENT_VERSION,
};
use crate::domain::bulk::{BulkCommand, BulkError, BulkEvent, InboxBulk, BULK_EVENT_VERSION};
use crate::domain::category::{
    CategoryCommand, CategoryConfig, CategoryError, CategoryEvent, CATEGORY_EVENT_VERSION,
};
use crate::domain::preferences::Audience;
use crate::domain::recipient::{
    Recipient, RecipientCommand, RecipientError, RecipientEvent, RECIPIENT_EVENT_VERSION,
};
use crate::domain::send::{Broadcast, Page, SendCommand, SendError, SendEvent, SEND_EVENT_VERSION};
use crate::domain::tenant::{
    Tenant, TenantCommand, TenantError, TenantEvent, TENANT_EVENT_VERSION,
};
use crate::domain::topic::{
    Membership, MembershipCommand, MembershipError, MembershipEvent, TOPIC_EVENT_VERSION,
};
use crate::domain::{
    ApiKey, ApiKeyCommand, ApiKeyError, ApiKeyEvent, Lifecycle, Notification, NotificationCommand,
    NotificationError, NotificationEvent, EVENT_VERSION,
};

/// The cqrs-es side of an aggregate whose rules are a pure
/// `decide(&self, command) -> Result<Vec<Event>, Error>` and `apply`.
macro_rules! pure_aggregate {
    ($aggregate:ty, $type_name:literal, $command:ty, $event:ty, $error:ty, $version:expr) => {
        impl DomainEvent for $event {
            fn event_type(&self) -> String {
                <$event>::event_type(self).to_owned()
            }
            fn event_version(&self) -> String {
                $version.to_owned()
            }
        }

        impl Aggregate for $aggregate {
            const TYPE: &'static str = $type_name;
            type Command = $command;
            type Event = $event;
            type Error = $error;
            type Services = ();

            async fn handle(
                &mut self,
                command: Self::Command,
                _services: &Self::Services,
                sink: &EventSink<Self>,
            ) -> Result<(), Self::Error> {
                for event in self.decide(command)? {
                    sink.write(event, self).await;
                }
                Ok(())
            }

            fn apply(&mut self, event: Self::Event) {
                <$aggregate>::apply(self, event);
            }
        }

        impl super::Named for $command {
            fn name(&self) -> &'static str {
                <$command>::name(self)
            }
        }
    };
}

impl DomainEvent for NotificationEvent {
    fn event_type(&self) -> String {
        NotificationEvent::event_type(self).to_owned()
    }
    fn event_version(&self) -> String {
        EVENT_VERSION.to_owned()
    }
}

/// A notification consults its audience (preferences, category settings,
/// the profile) when it is created, through the service it is handed; its
/// other commands need nothing but its own state.
impl Aggregate for Notification {
    const TYPE: &'static str = "Notification";
    type Command = NotificationCommand;
    type Event = NotificationEvent;
    type Error = NotificationError;
    type Services = Arc<dyn AudienceLookup>;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let audience = match &command {
            // A create on an id that exists is refused before any lookup.
            NotificationCommand::Create {
                audience: Some(read),
                ..
            } => (**read).clone(),
            NotificationCommand::Create { content, .. } if self.id.is_none() => {
                audience_for(services, content).await?
            }
            // Released from a batch: its channels are decided now.
            NotificationCommand::Release { .. } if self.lifecycle == Lifecycle::Batched => {
                match &self.content {
                    Some(content) => audience_for(services, content).await?,
                    None => Audience::default(),
                }
            }
            _ => Audience::default(),
        };
        for event in self.decide_for(command, &audience)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        Notification::apply(self, event);
    }
}

/// What `content`'s create consults, or why it cannot be read.
async fn audience_for(
    services: &Arc<dyn AudienceLookup>,
    content: &crate::domain::NewNotification,
) -> Result<Audience, NotificationError> {
    services.audience(content).await.map_err(|e| match e {
        CommandError::Unreadable(event) => NotificationError::AudienceUnreadable(event.to_string()),
        other => NotificationError::AudienceUnavailable(other.to_string()),
    })
}

/// Fans out one page of a send: lists its next recipients, creates their
/// notifications (ids derived from the send and the recipient), and says
/// what it did. The domain service a send is handed.
#[async_trait::async_trait]
pub trait PageFanner: std::marker::Send + Sync {
    async fn fan_out(&self, send: &Broadcast, page: u64) -> Result<Page, String>;
}

impl DomainEvent for SendEvent {
    fn event_type(&self) -> String {
        SendEvent::event_type(self).to_owned()
    }
    fn event_version(&self) -> String {
        SEND_EVENT_VERSION.to_owned()
    }
}

/// A send fans out a page through the service it is handed, then records
/// the page; its other commands are its own rules.
impl Aggregate for Broadcast {
    const TYPE: &'static str = "Send";
    type Command = SendCommand;
    type Event = SendEvent;
    type Error = SendError;
    type Services = Arc<dyn PageFanner>;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let command = match command {
            SendCommand::FanOut { page, at } if self.wants(page) => SendCommand::RecordPage {
                page: services
                    .fan_out(self, page)
                    .await
                    .map_err(SendError::Unavailable)?,
                at,
            },
            other => other,
        };
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        Broadcast::apply(self, event);
    }
}

impl super::Named for SendCommand {
    fn name(&self) -> &'static str {
        SendCommand::name(self)
    }
}

impl super::Named for NotificationCommand {
    fn name(&self) -> &'static str {
        NotificationCommand::name(self)
    }
}
pure_aggregate!(
    ApiKey,
    "ApiKey",
    ApiKeyCommand,
    ApiKeyEvent,
    ApiKeyError,
    KEY_EVENT_VERSION
);
pure_aggregate!(
    Recipient,
    "Recipient",
    RecipientCommand,
    RecipientEvent,
    RecipientError,
    RECIPIENT_EVENT_VERSION
);
pure_aggregate!(
    CategoryConfig,
    "Category",
    CategoryCommand,
    CategoryEvent,
    CategoryError,
    CATEGORY_EVENT_VERSION
);
pure_aggregate!(
    Tenant,
    "Tenant",
    TenantCommand,
    TenantEvent,
    TenantError,
    TENANT_EVENT_VERSION
);
pure_aggregate!(
    Membership,
    "TopicMembership",
    MembershipCommand,
    MembershipEvent,
    MembershipError,
    TOPIC_EVENT_VERSION
);
pure_aggregate!(
    InboxBulk,
    "InboxBulk",
    BulkCommand,
    BulkEvent,
    BulkError,
    BULK_EVENT_VERSION
);
pure_aggregate!(
    Batching,
    "Batching",
    BatchingCommand,
    BatchingEvent,
    BatchingError,
    BATCHING_EVENT_VERSION
);
pure_aggregate!(
    crate::domain::batch::Batch,
    "Batch",
    crate::domain::batch::BatchCommand,
    crate::domain::batch::BatchEvent,
    crate::domain::batch::BatchError,
    crate::domain::batch::BATCH_EVENT_VERSION
);
pure_aggregate!(
    crate::domain::template::Template,
    "Template",
    crate::domain::template::TemplateCommand,
    crate::domain::template::TemplateEvent,
    crate::domain::template::TemplateError,
    crate::domain::template::TEMPLATE_EVENT_VERSION
);
pure_aggregate!(
    crate::domain::experiment::Experiment,
    "Experiment",
    crate::domain::experiment::ExperimentCommand,
    crate::domain::experiment::ExperimentEvent,
    crate::domain::experiment::ExperimentError,
    crate::domain::experiment::EXPERIMENT_EVENT_VERSION
);
pure_aggregate!(
    crate::domain::experiment::Assignment,
    "ExperimentAssignment",
    crate::domain::experiment::AssignmentCommand,
    crate::domain::experiment::AssignmentEvent,
    crate::domain::experiment::AssignmentError,
    crate::domain::experiment::EXPERIMENT_EVENT_VERSION
);
