//! The aggregates as cqrs-es sees them: thin adapters over the pure rules in
//! `domain` (`notification`, `api_key`, `recipient`). Each decides every
//! event first, so a refused command writes nothing to the sink.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};

use crate::domain::api_key::KEY_EVENT_VERSION;
use crate::domain::recipient::{
    Recipient, RecipientCommand, RecipientError, RecipientEvent, RECIPIENT_EVENT_VERSION,
};
use crate::domain::{
    ApiKey, ApiKeyCommand, ApiKeyError, ApiKeyEvent, Notification, NotificationCommand,
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

pure_aggregate!(
    Notification,
    "Notification",
    NotificationCommand,
    NotificationEvent,
    NotificationError,
    EVENT_VERSION
);
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
