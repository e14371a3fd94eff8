//! A send to many: a list of recipients (up to 1,000) or a topic. One
//! stream per send records the request and each page fanned out, so a
//! send's progress is in the log: a fan-out that stops (a crash, a
//! failover) resumes from the last page recorded, and the notifications of
//! a page have ids derived from the send and the recipient, so a page run
//! twice creates nothing twice.

use serde::{Deserialize, Serialize};

use super::command::NewNotification;
use super::contact::TenantId;
use super::experiment::{ExperimentId, VariantName};
use super::template::TemplateUse;
use super::topic::TopicName;
use super::values::{Body, Category, Channel, GroupKey, NotificationId, Priority, Title, UserId};
use super::{Data, Timestamp};

pub const SEND_EVENT_VERSION: &str = "1.0";

/// The most recipients one send lists.
pub const MAX_RECIPIENTS: usize = 1000;

/// What each recipient of a send gets: a notification's content without
/// its recipient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendContent {
    pub category: Category,
    pub title: Title,
    pub body: Body,
    pub data: Data,
    pub priority: Priority,
    pub channels: Vec<Channel>,
    pub group_key: Option<GroupKey>,
    pub deliver_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    /// Rendered in every locale when the send was accepted; each
    /// recipient gets theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Box<TemplateUse>>,
    /// The experiment it is sent under, each variant's text ready: each
    /// recipient is enrolled as their page is fanned out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<Box<SendExperiment>>,
}

/// A send to many under an experiment: what each variant sends, resolved
/// when the send was accepted (a template rendered with the send's
/// variables), so no later edit changes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendExperiment {
    pub id: ExperimentId,
    pub texts: Vec<(VariantName, ArmText)>,
}

/// One variant's text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ArmText {
    AsSent,
    Template { template: Box<TemplateUse> },
    Content { title: Title, body: Body },
}

impl ArmText {
    /// `content` with this text instead of its own.
    pub fn apply(&self, content: &mut NewNotification) {
        match self {
            ArmText::AsSent => {}
            ArmText::Template { template } => {
                let text = template.default_text();
                content.title = text.title.clone();
                content.body = text.body.clone();
                content.template = Some(template.clone());
            }
            ArmText::Content { title, body } => {
                content.title = title.clone();
                content.body = body.clone();
                content.template = None;
            }
        }
    }
}

impl SendContent {
    /// `content` without its recipient.
    pub fn of(content: NewNotification) -> Self {
        let NewNotification {
            recipient: _,
            category,
            title,
            body,
            data,
            priority,
            channels,
            group_key,
            deliver_at,
            tenant,
            template,
            // Each recipient's, decided at the fan-out.
            experiment: _,
        } = content;
        Self {
            category,
            title,
            body,
            data,
            priority,
            channels,
            group_key,
            deliver_at,
            tenant,
            template,
            experiment: None,
        }
    }

    pub fn for_recipient(&self, recipient: UserId) -> NewNotification {
        NewNotification {
            recipient,
            category: self.category.clone(),
            title: self.title.clone(),
            body: self.body.clone(),
            data: self.data.clone(),
            priority: self.priority,
            channels: self.channels.clone(),
            group_key: self.group_key.clone(),
            deliver_at: self.deliver_at,
            tenant: self.tenant.clone(),
            template: self.template.clone(),
            experiment: None,
        }
    }
}

/// Who a send goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendTarget {
    /// Without repeats, in the order given.
    Recipients(Vec<UserId>),
    /// Its subscribers when each page is fanned out.
    Topic(TopicName),
}

/// The id of `recipient`'s notification of send `send`: the same on every
/// run of its page.
pub fn notification_id(send: &str, recipient: &UserId) -> NotificationId {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x7d1f_0c55_9a0e_4d2c_8f7e_51a3_c0de_5e4d);
    NotificationId(uuid::Uuid::new_v5(
        &NAMESPACE,
        format!("{send}/{}", recipient.as_str()).as_bytes(),
    ))
}

/// One page of a fan-out, as the fan-out did it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// The page's number, from 0.
    pub page: u64,
    /// The last recipient of the page (the next starts after it).
    pub through: Option<UserId>,
    /// Recipients whose notification was created with a channel to go on.
    pub created: u64,
    /// Recipients whose every channel was suppressed (still recorded).
    pub suppressed: u64,
    /// Recipients passed over: their preferences could not be read.
    #[serde(default)]
    pub skipped: u64,
    /// No recipient is left.
    pub done: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SendCommand {
    Request {
        /// The send's own id (its stream's).
        id: String,
        content: Box<SendContent>,
        target: SendTarget,
        /// How many it is expected to reach (a topic's subscribers now).
        expected: u64,
        at: Timestamp,
    },
    /// Fan out page `page` (the fan-out service does it, then records it).
    FanOut { page: u64, at: Timestamp },
    /// Record page `page` as fanned out.
    RecordPage { page: Page, at: Timestamp },
}

impl SendCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Request { .. } => "RequestSend",
            Self::FanOut { .. } | Self::RecordPage { .. } => "FanOutPage",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SendEvent {
    SendRequested {
        id: String,
        content: SendContent,
        target: SendTarget,
        expected: u64,
        requested_at: Timestamp,
    },
    SendPageFannedOut {
        page: Page,
        fanned_out_at: Timestamp,
    },
}

impl SendEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::SendRequested { .. } => "SendRequested",
            Self::SendPageFannedOut { .. } => "SendPageFannedOut",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("a send with this id already exists")]
    AlreadyExists,
    #[error("no send with this id exists")]
    NotFound,
    /// The fan-out could not read or write a page (an outage): retried.
    #[error("the page could not be fanned out: {0}")]
    Unavailable(String),
}

/// Where a send is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendStatus {
    #[default]
    Absent,
    FanningOut,
    Done,
}

impl SendStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Absent => "absent",
            Self::FanningOut => "fanning_out",
            Self::Done => "done",
        }
    }
}

/// One send as its events leave it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Broadcast {
    pub status: SendStatus,
    pub id: String,
    pub content: Option<SendContent>,
    pub target: Option<SendTarget>,
    pub expected: u64,
    /// Pages recorded so far.
    pub pages: u64,
    pub through: Option<UserId>,
    pub created: u64,
    pub suppressed: u64,
    pub requested_at: Option<Timestamp>,
    pub done_at: Option<Timestamp>,
}

impl Broadcast {
    /// Recipients accounted for so far: when done, all of them.
    pub fn reached(&self) -> u64 {
        self.created + self.suppressed
    }

    /// Whether page `page` is the one to fan out next.
    pub fn wants(&self, page: u64) -> bool {
        self.status == SendStatus::FanningOut && page == self.pages
    }

    pub fn decide(&self, command: SendCommand) -> Result<Vec<SendEvent>, SendError> {
        match command {
            // The adapter runs the fan-out and decides its `RecordPage`.
            SendCommand::FanOut { .. } => Ok(vec![]),
            SendCommand::Request {
                id,
                content,
                target,
                expected,
                at,
            } => {
                if self.status != SendStatus::Absent {
                    return Err(SendError::AlreadyExists);
                }
                Ok(vec![SendEvent::SendRequested {
                    id,
                    content: *content,
                    target,
                    expected,
                    requested_at: at,
                }])
            }
            SendCommand::RecordPage { page, at } => {
                match self.status {
                    SendStatus::Absent => return Err(SendError::NotFound),
                    // A page recorded already (or any after the last) changes nothing.
                    SendStatus::Done => return Ok(vec![]),
                    SendStatus::FanningOut if page.page != self.pages => return Ok(vec![]),
                    SendStatus::FanningOut => {}
                }
                let floor = self.requested_at.map_or(at, |r| at.max(r));
                Ok(vec![SendEvent::SendPageFannedOut {
                    page,
                    fanned_out_at: floor,
                }])
            }
        }
    }

    pub fn apply(&mut self, event: SendEvent) {
        match event {
            SendEvent::SendRequested {
                id,
                content,
                target,
                expected,
                requested_at,
            } => {
                self.status = SendStatus::FanningOut;
                self.id = id;
                self.content = Some(content);
                self.target = Some(target);
                self.expected = expected;
                self.requested_at = Some(requested_at);
            }
            SendEvent::SendPageFannedOut {
                page,
                fanned_out_at,
            } => {
                self.pages = page.page + 1;
                self.through = page.through;
                self.created += page.created;
                self.suppressed += page.suppressed;
                if page.done {
                    self.status = SendStatus::Done;
                    self.done_at = Some(fanned_out_at);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone as _, Utc};

    fn t() -> Timestamp {
        Utc.timestamp_opt(1_800_000_000, 0).unwrap()
    }

    fn content() -> SendContent {
        SendContent {
            category: Category::parse("comment").unwrap(),
            title: Title::parse("t").unwrap(),
            body: Body::parse("b").unwrap(),
            data: Data::new(),
            priority: Priority::Normal,
            channels: vec![Channel::InApp],
            group_key: None,
            deliver_at: None,
            tenant: None,
            template: None,
            experiment: None,
        }
    }

    fn page(n: u64, done: bool) -> Page {
        Page {
            page: n,
            through: Some(UserId::parse(&format!("u{n}")).unwrap()),
            created: 10,
            suppressed: 2,
            skipped: 0,
            done,
        }
    }

    fn run(s: &mut Broadcast, c: SendCommand) -> usize {
        let events = s.decide(c).unwrap();
        let n = events.len();
        events.into_iter().for_each(|e| s.apply(e));
        n
    }

    #[test]
    fn pages_are_recorded_once_each_in_order_and_the_last_ends_the_send() {
        let mut s = Broadcast::default();
        let topic = SendTarget::Topic(TopicName::parse("post-42").unwrap());
        let request = SendCommand::Request {
            id: "s1".into(),
            content: Box::new(content()),
            target: topic,
            expected: 36,
            at: t(),
        };
        assert_eq!(run(&mut s, request.clone()), 1);
        assert_eq!(s.decide(request), Err(SendError::AlreadyExists));
        let record = |p| SendCommand::RecordPage { page: p, at: t() };
        assert_eq!(run(&mut s, record(page(1, false))), 0, "not the next page");
        assert_eq!(run(&mut s, record(page(0, false))), 1);
        assert_eq!(run(&mut s, record(page(0, false))), 0, "a page run twice");
        assert_eq!(run(&mut s, record(page(1, false))), 1);
        assert_eq!(run(&mut s, record(page(2, true))), 1);
        assert_eq!(s.status, SendStatus::Done);
        assert_eq!((s.created, s.suppressed, s.reached()), (30, 6, 36));
        assert_eq!(
            run(&mut s, record(page(3, true))),
            0,
            "nothing after the end"
        );
    }

    #[test]
    fn a_recipients_notification_id_is_the_same_on_every_run_and_differs_per_recipient() {
        let alice = UserId::parse("alice").unwrap();
        let bob = UserId::parse("bob").unwrap();
        assert_eq!(notification_id("s1", &alice), notification_id("s1", &alice));
        assert_ne!(notification_id("s1", &alice), notification_id("s1", &bob));
        assert_ne!(notification_id("s1", &alice), notification_id("s2", &alice));
    }
}
