//! The pure core: value types, the aggregates' commands, events, errors and
//! rules (notifications, API keys, recipients). No IO, no async runtime, no
//! clock reads: time arrives inside each command, so every rule here is a
//! plain function to test.

pub mod api_key;
pub mod batch;
pub mod batching;
pub mod bulk;
pub mod category;
pub mod command;
pub mod contact;
pub mod event;
pub mod experiment;
pub mod local_time;
pub mod notification;
pub mod preferences;
pub mod recipient;
pub mod send;
pub mod simulation;
pub mod statistics;
pub mod superseding;
pub mod template;
pub mod tenant;
pub mod topic;
pub mod values;

pub use command::{NewNotification, NotificationCommand};
pub use event::{NotificationEvent, EVENT_VERSION};
pub use notification::{Lifecycle, Notification, NotificationError};

/// Every time in the domain: UTC.
pub type Timestamp = chrono::DateTime<chrono::Utc>;
/// Free-form data the sender attaches (a JSON object); tidings stores and returns it.
pub type Data = serde_json::Map<String, serde_json::Value>;
pub use api_key::{ApiKey, ApiKeyCommand, ApiKeyError, ApiKeyEvent};
pub use values::{
    parse_data, parse_scopes, Body, Category, Channel, DataProblem, FailureReason, GroupKey,
    InvalidValue, KeyName, NotificationId, Priority, Scope, Title, UserId,
};
pub use values::{BODY_MAX_CHARS, GROUP_KEY_MAX_CHARS, TITLE_MAX_CHARS};
