//! Event versioning: stored events keep the shape they were written in;
//! readers upcast old shapes to the current one. The same upcasters serve
//! cqrs-es (loading aggregates), the global log reader (projections) and the
//! exports, so every reader sees one shape.
//!
//! The one old shape so far: `NotificationCreated` 0.9, written before a
//! notification could go to several channels. It had a single `channel`, an
//! `urgent` flag instead of `priority`, and neither `data` nor `group_key`.

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use serde_json::{json, Value};

use crate::domain::EVENT_VERSION;

/// Brings `payload` of `event_type` at `version` to the current shape; None
/// when it already is.
pub fn upcast(event_type: &str, version: &str, payload: &Value) -> Option<Value> {
    match (event_type, version) {
        ("NotificationCreated", "0.9") => Some(created_from_0_9(payload)),
        _ => None,
    }
}

fn created_from_0_9(payload: &Value) -> Value {
    let old = payload
        .get("NotificationCreated")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut new = old.as_object().cloned().unwrap_or_default();
    let channel = new.remove("channel").unwrap_or_else(|| json!("in_app"));
    let urgent = new
        .remove("urgent")
        .and_then(|u| u.as_bool())
        .unwrap_or(false);
    new.insert("channels".into(), json!([channel]));
    new.insert(
        "priority".into(),
        json!(if urgent { "urgent" } else { "normal" }),
    );
    new.entry("data").or_insert_with(|| json!({}));
    new.entry("group_key").or_insert(Value::Null);
    new.entry("deliver_at").or_insert(Value::Null);
    json!({ "NotificationCreated": new })
}

fn unreadable_version(event_type: &str, version: &str) -> String {
    format!(
        "event version {version} of {event_type} is not one this release reads (it reads {EVENT_VERSION})"
    )
}

/// Why a payload does not parse, the same whether it was read from text or
/// from a value tree (only text parsing knows a line and column).
pub fn unparsable(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let at = format!(" at line {} column {}", e.line(), e.column());
    let why = text.strip_suffix(&at).unwrap_or(&text);
    format!("the payload does not parse: {why}")
}

/// A payload in the shape `event_version` gave it, as the current shape of
/// `E`: upcast when it is an old one, refused when this release does not
/// know the version.
pub fn decode_payload<E: serde::de::DeserializeOwned>(
    event_type: &str,
    event_version: &str,
    payload: &Value,
) -> Result<E, String> {
    let read = if event_version == EVENT_VERSION {
        E::deserialize(payload)
    } else {
        match upcast(event_type, event_version, payload) {
            Some(current) => E::deserialize(current),
            None => return Err(unreadable_version(event_type, event_version)),
        }
    };
    read.map_err(|e| unparsable(&e))
}

/// Reads an event of `E` from its payload's JSON text: in the current shape
/// straight from the text (no value tree in between), an old shape through
/// a value tree and its upcaster.
pub fn decode_text<E: serde::de::DeserializeOwned>(
    event_type: &str,
    event_version: &str,
    payload: &[u8],
) -> Result<E, String> {
    if event_version == EVENT_VERSION {
        serde_json::from_slice::<E>(payload).map_err(|e| unparsable(&e))
    } else {
        let old: Value = serde_json::from_slice(payload).map_err(|e| unparsable(&e))?;
        decode_payload(event_type, event_version, &old)
    }
}

/// Upcasts a logged event in place (payload and version).
pub fn upcast_logged(event_type: &str, version: &mut String, payload: &mut Value) {
    if let Some(new) = upcast(event_type, version, payload) {
        *payload = new;
        *version = EVENT_VERSION.to_owned();
    }
}

/// The upcasters for cqrs-es's event store.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![Box::new(Upcaster)]
}

struct Upcaster;

impl EventUpcaster for Upcaster {
    fn can_upcast(&self, event_type: &str, event_version: &str) -> bool {
        upcast(event_type, event_version, &Value::Null).is_some()
    }

    fn upcast(&self, mut event: SerializedEvent) -> SerializedEvent {
        upcast_logged(
            &event.event_type,
            &mut event.event_version,
            &mut event.payload,
        );
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::NotificationEvent;

    #[test]
    fn a_0_9_created_event_reads_as_the_current_shape() {
        let old = json!({"NotificationCreated": {
            "id": "01a2024f-eced-76cf-8900-aa4e3541250c",
            "recipient": "ann", "category": "comment", "title": "Hi", "body": "there",
            "channel": "email", "urgent": true,
            "created_at": "2025-01-02T03:04:05Z"
        }});
        let mut version = "0.9".to_owned();
        let mut payload = old;
        upcast_logged("NotificationCreated", &mut version, &mut payload);
        assert_eq!(version, EVENT_VERSION);
        let event: NotificationEvent = serde_json::from_value(payload).expect("the current shape");
        let NotificationEvent::NotificationCreated {
            channels,
            priority,
            data,
            group_key,
            ..
        } = event
        else {
            panic!("still a created event");
        };
        assert_eq!(channels, [crate::domain::Channel::Email]);
        assert_eq!(priority, crate::domain::Priority::Urgent);
        assert!(data.is_empty() && group_key.is_none());
    }

    #[test]
    fn current_events_are_left_alone() {
        let mut version = EVENT_VERSION.to_owned();
        let mut payload = json!({"NotificationRead": {"read_at": "2025-01-02T03:04:05Z"}});
        let before = payload.clone();
        upcast_logged("NotificationRead", &mut version, &mut payload);
        assert_eq!(payload, before);
        assert!(!Upcaster.can_upcast("NotificationCreated", EVENT_VERSION));
        assert!(Upcaster.can_upcast("NotificationCreated", "0.9"));
    }
}
