//! The pure core: value types, the notification aggregate's commands, events,
//! errors and rules. No IO, no async runtime, no clock reads: time arrives
//! inside each command, so every rule here is a plain function to test.

pub mod notification;
pub mod values;

pub use notification::{
    Data, Lifecycle, NewNotification, Notification, NotificationCommand, NotificationError,
    NotificationEvent, Timestamp, EVENT_VERSION,
};
pub use values::{
    Body, Category, Channel, GroupKey, InvalidValue, NotificationId, Priority, Title, UserId,
};
