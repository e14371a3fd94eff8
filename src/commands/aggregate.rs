//! The aggregates as cqrs-es sees them: thin adapters over the pure rules in
//! `domain` (`notification`, `api_key`).

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};

use crate::domain::api_key::KEY_EVENT_VERSION;
use crate::domain::{
    ApiKey, ApiKeyCommand, ApiKeyError, ApiKeyEvent, Notification, NotificationCommand,
    NotificationError, NotificationEvent, EVENT_VERSION,
};

impl DomainEvent for NotificationEvent {
    fn event_type(&self) -> String {
        NotificationEvent::event_type(self).to_owned()
    }
    fn event_version(&self) -> String {
        EVENT_VERSION.to_owned()
    }
}

impl Aggregate for Notification {
    const TYPE: &'static str = "Notification";
    type Command = NotificationCommand;
    type Event = NotificationEvent;
    type Error = NotificationError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        // Decide everything first: a rejected command writes nothing to the sink.
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        Notification::apply(self, event);
    }
}

impl DomainEvent for ApiKeyEvent {
    fn event_type(&self) -> String {
        ApiKeyEvent::event_type(self).to_owned()
    }
    fn event_version(&self) -> String {
        KEY_EVENT_VERSION.to_owned()
    }
}

impl Aggregate for ApiKey {
    const TYPE: &'static str = "ApiKey";
    type Command = ApiKeyCommand;
    type Event = ApiKeyEvent;
    type Error = ApiKeyError;
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
        ApiKey::apply(self, event);
    }
}

impl super::Named for ApiKeyCommand {
    fn name(&self) -> &'static str {
        ApiKeyCommand::name(self)
    }
}
