//! The notification aggregate, told as given (past events) / when (a command) /
//! then (the exact events, or the exact error), plus a property test that runs
//! random command sequences through `decide` and `apply`.

use proptest::prelude::*;

use chrono::DateTime;

use super::*;
use crate::domain::values::{
    Body, Category, Channel, GroupKey, NotificationId, Priority, Title, UserId,
};
use crate::domain::Data;

use NotificationCommand as C;
use NotificationError as Error;
use NotificationEvent as E;

const ID: NotificationId = NotificationId(uuid::Uuid::from_u128(0x0192_7000_8000_0042));

/// A time `secs` seconds after a fixed instant (tests never read the clock).
fn t(secs: i64) -> Timestamp {
    DateTime::from_timestamp(1_750_000_000 + secs, 0).expect("a time in range")
}

fn content(channels: &[Channel], deliver_at: Option<Timestamp>) -> NewNotification {
    NewNotification {
        recipient: UserId::parse("ada@example.com").expect("a valid user"),
        category: Category::parse("comment").expect("a valid category"),
        title: Title::parse("Grace commented on your post").expect("a valid title"),
        body: Body::parse("Nice work!").expect("a valid body"),
        data: Data::from_iter([("post".to_owned(), serde_json::json!(42))]),
        priority: Priority::Normal,
        channels: channels.to_vec(),
        group_key: Some(GroupKey::parse("post-42").expect("a valid group key")),
        deliver_at,
        tenant: None,
        template: None,
        experiment: None,
    }
}

fn create(channels: &[Channel], deliver_at: Option<Timestamp>, at: Timestamp) -> C {
    let content = Box::new(content(channels, deliver_at));
    C::Create {
        id: ID,
        content,
        audience: None,
        batchable: true,
        at,
    }
}

fn created(channels: &[Channel], deliver_at: Option<Timestamp>, at: Timestamp) -> E {
    let c = content(channels, deliver_at);
    E::NotificationCreated {
        id: ID,
        recipient: c.recipient,
        category: c.category,
        title: c.title,
        body: c.body,
        data: c.data,
        priority: c.priority,
        channels: c.channels,
        group_key: c.group_key,
        deliver_at: c.deliver_at,
        created_at: at,
        tenant: None,
        template: None,
        channel_content: Default::default(),
        experiment: None,
    }
}

fn deliver(channel: Channel, at: Timestamp) -> C {
    C::Deliver { channel, at }
}

fn delivered_at(channel: Channel, at: Timestamp) -> E {
    E::NotificationDelivered {
        channel,
        delivered_at: at,
    }
}

/// `seen_at(t)` is `NotificationSeen { seen_at: t }`, and so on.
macro_rules! events_at {
    ($($field:ident => $variant:ident),+ $(,)?) => {
        $(fn $field(at: Timestamp) -> E { E::$variant { $field: at } })+
    };
}
events_at! {
    seen_at => NotificationSeen,
    read_at => NotificationRead,
    unread_at => NotificationUnread,
    clicked_at => NotificationClicked,
    archived_at => NotificationArchived,
    unarchived_at => NotificationUnarchived,
    cancelled_at => NotificationCancelled,
    deleted_at => NotificationDeleted,
}

// Histories: the event stream of a notification in each state.

/// Email only, so nothing is delivered until a worker reports back.
fn pending() -> Vec<E> {
    vec![created(&[Channel::Email], None, t(0))]
}

/// In-app and email, due at t(100).
fn scheduled() -> Vec<E> {
    let deliver_at = t(100);
    vec![
        created(&[Channel::InApp, Channel::Email], Some(deliver_at), t(0)),
        E::NotificationScheduled {
            deliver_at,
            scheduled_at: t(0),
        },
    ]
}

/// In-app and email, in the inbox since t(0), not seen yet.
fn delivered() -> Vec<E> {
    vec![
        created(&[Channel::InApp, Channel::Email], None, t(0)),
        delivered_at(Channel::InApp, t(0)),
    ]
}

fn delivered_then(more: Vec<E>) -> Vec<E> {
    [delivered(), more].concat()
}

/// Delivered, then seen and read at t(10).
fn read() -> Vec<E> {
    delivered_then(vec![seen_at(t(10)), read_at(t(10))])
}

fn cancelled() -> Vec<E> {
    [pending(), vec![cancelled_at(t(10))]].concat()
}

fn deleted() -> Vec<E> {
    delivered_then(vec![deleted_at(t(10))])
}

/// The commands on an inbox item, which need it delivered first.
fn inbox_actions(at: Timestamp) -> Vec<C> {
    let (seen, read, unread) = (C::MarkSeen { at }, C::MarkRead { at }, C::MarkUnread { at });
    let (click, archive, unarchive) = (C::Click { at }, C::Archive { at }, C::Unarchive { at });
    vec![seen, read, unread, click, archive, unarchive]
}

/// Every command but `Create`.
fn every_command(at: Timestamp) -> Vec<C> {
    let mut commands = inbox_actions(at);
    commands.extend([deliver(Channel::InApp, at), deliver(Channel::Email, at)]);
    commands.extend([C::Cancel { at }, C::Delete { at }]);
    commands
}

// given / when / then

struct Given(Notification);

struct Then {
    command: C,
    result: Result<Vec<E>, Error>,
}

fn given(events: Vec<E>) -> Given {
    let mut state = Notification::default();
    events.into_iter().for_each(|event| state.apply(event));
    Given(state)
}

impl Given {
    fn when(&self, command: C) -> Then {
        Then {
            result: self.0.decide(command.clone()),
            command,
        }
    }
}

impl Then {
    #[track_caller]
    fn then(self, expected: Vec<E>) {
        assert_eq!(self.result, Ok(expected), "when {:?}", self.command);
    }

    #[track_caller]
    fn then_err(self, expected: Error) {
        assert_eq!(self.result, Err(expected), "when {:?}", self.command);
    }
}

// Absent

#[test]
fn every_command_on_an_unknown_notification_is_not_found() {
    for command in every_command(t(0)) {
        given(vec![]).when(command).then_err(Error::NotFound);
    }
}

#[test]
fn creating_an_in_app_notification_puts_it_in_the_inbox_at_once() {
    let channels = [Channel::Email, Channel::InApp];
    given(vec![]).when(create(&channels, None, t(0))).then(vec![
        created(&channels, None, t(0)),
        delivered_at(Channel::InApp, t(0)),
    ]);
}

#[test]
fn creating_an_email_only_notification_leaves_it_pending() {
    given(vec![])
        .when(create(&[Channel::Email], None, t(0)))
        .then(pending());
}

#[test]
fn creating_with_a_future_deliver_at_schedules_it() {
    let channels = [Channel::InApp, Channel::Email];
    given(vec![])
        .when(create(&channels, Some(t(100)), t(0)))
        .then(scheduled());
}

#[test]
fn creating_with_deliver_at_now_or_in_the_past_delivers_at_once() {
    for deliver_at in [t(0), t(-5)] {
        let mut state = Notification::default();
        let events = state
            .decide(create(&[Channel::InApp], Some(deliver_at), t(0)))
            .expect("accepted");
        assert_eq!(events.len(), 2, "created and delivered: {events:?}");
        assert!(matches!(events[1], E::NotificationDelivered { .. }));
        events.into_iter().for_each(|e| state.apply(e));
        assert_eq!(state.lifecycle, Lifecycle::Delivered);
    }
}

#[test]
fn creating_a_notification_that_exists_is_rejected() {
    for history in [pending(), scheduled(), delivered(), cancelled(), deleted()] {
        given(history)
            .when(create(&[Channel::InApp], None, t(20)))
            .then_err(Error::AlreadyExists);
    }
}

// Pending and scheduled

#[test]
fn inbox_actions_on_a_pending_notification_are_rejected_as_not_delivered() {
    for command in inbox_actions(t(20)) {
        given(pending())
            .when(command)
            .then_err(Error::NotDelivered(Lifecycle::Pending));
    }
}

#[test]
fn delivering_a_pending_notification_on_a_requested_channel_delivers_it() {
    given(pending())
        .when(deliver(Channel::Email, t(20)))
        .then(vec![delivered_at(Channel::Email, t(20))]);
}

#[test]
fn delivering_on_a_channel_not_requested_is_rejected() {
    given(pending())
        .when(deliver(Channel::InApp, t(20)))
        .then_err(Error::ChannelNotRequested(Channel::InApp));
}

#[test]
fn inbox_actions_on_a_scheduled_notification_are_rejected_as_not_delivered() {
    for command in inbox_actions(t(20)) {
        given(scheduled())
            .when(command)
            .then_err(Error::NotDelivered(Lifecycle::Scheduled));
    }
}

#[test]
fn delivering_a_scheduled_notification_before_it_is_due_is_rejected() {
    given(scheduled())
        .when(deliver(Channel::InApp, t(99)))
        .then_err(Error::NotYetDue { deliver_at: t(100) });
}

#[test]
fn delivering_a_scheduled_notification_once_it_is_due_delivers_it() {
    for at in [t(100), t(150)] {
        given(scheduled())
            .when(deliver(Channel::InApp, at))
            .then(vec![delivered_at(Channel::InApp, at)]);
    }
}

#[test]
fn cancelling_a_pending_or_scheduled_notification_cancels_it() {
    for history in [pending(), scheduled()] {
        given(history)
            .when(C::Cancel { at: t(20) })
            .then(vec![cancelled_at(t(20))]);
    }
}

#[test]
fn deleting_a_notification_in_any_state_but_deleted_deletes_it() {
    for history in [pending(), scheduled(), delivered(), cancelled()] {
        given(history)
            .when(C::Delete { at: t(20) })
            .then(vec![deleted_at(t(20))]);
    }
}

// Delivered

#[test]
fn marking_a_delivered_notification_seen_records_it_seen() {
    given(delivered())
        .when(C::MarkSeen { at: t(20) })
        .then(vec![seen_at(t(20))]);
}

#[test]
fn marking_an_unseen_notification_read_records_it_seen_then_read() {
    given(delivered())
        .when(C::MarkRead { at: t(20) })
        .then(vec![seen_at(t(20)), read_at(t(20))]);
}

#[test]
fn marking_a_seen_notification_read_only_records_the_read() {
    given(delivered_then(vec![seen_at(t(10))]))
        .when(C::MarkRead { at: t(20) })
        .then(vec![read_at(t(20))]);
}

#[test]
fn marking_a_read_notification_unread_records_it_unread() {
    given(read())
        .when(C::MarkUnread { at: t(20) })
        .then(vec![unread_at(t(20))]);
}

#[test]
fn clicking_an_unseen_notification_records_it_seen_read_and_clicked() {
    given(delivered()).when(C::Click { at: t(20) }).then(vec![
        seen_at(t(20)),
        read_at(t(20)),
        clicked_at(t(20)),
    ]);
}

#[test]
fn clicking_a_read_notification_only_records_the_click() {
    given(read())
        .when(C::Click { at: t(20) })
        .then(vec![clicked_at(t(20))]);
}

#[test]
fn clicking_a_clicked_notification_marked_unread_only_reads_it_again() {
    let clicked_then_unread = vec![clicked_at(t(10)), unread_at(t(11))];
    given([read(), clicked_then_unread].concat())
        .when(C::Click { at: t(20) })
        .then(vec![read_at(t(20))]);
}

#[test]
fn archiving_a_delivered_notification_archives_it() {
    given(delivered())
        .when(C::Archive { at: t(20) })
        .then(vec![archived_at(t(20))]);
}

#[test]
fn unarchiving_an_archived_notification_unarchives_it() {
    given(delivered_then(vec![archived_at(t(10))]))
        .when(C::Unarchive { at: t(20) })
        .then(vec![unarchived_at(t(20))]);
}

#[test]
fn a_command_whose_outcome_is_already_so_changes_nothing() {
    let at = t(20);
    let cases = [
        (delivered_then(vec![seen_at(t(10))]), C::MarkSeen { at }),
        (read(), C::MarkRead { at }),
        (delivered(), C::MarkUnread { at }),
        ([read(), vec![clicked_at(t(10))]].concat(), C::Click { at }),
        (delivered_then(vec![archived_at(t(10))]), C::Archive { at }),
        (delivered(), C::Unarchive { at }),
        (cancelled(), C::Cancel { at }),
    ];
    for (history, command) in cases {
        given(history).when(command).then(vec![]);
    }
}

#[test]
fn delivering_on_another_requested_channel_records_that_delivery() {
    given(delivered())
        .when(deliver(Channel::Email, t(20)))
        .then(vec![delivered_at(Channel::Email, t(20))]);
}

#[test]
fn delivering_twice_on_the_same_channel_is_rejected() {
    given(delivered())
        .when(deliver(Channel::InApp, t(20)))
        .then_err(Error::ChannelAlreadyDelivered(Channel::InApp));
}

#[test]
fn cancelling_a_delivered_notification_is_rejected() {
    given(delivered())
        .when(C::Cancel { at: t(20) })
        .then_err(Error::AlreadyDelivered);
}

// Cancelled and deleted

#[test]
fn inbox_actions_and_deliveries_on_a_cancelled_notification_are_rejected_as_cancelled() {
    let mut commands = inbox_actions(t(20));
    commands.push(deliver(Channel::Email, t(20)));
    for command in commands {
        given(cancelled()).when(command).then_err(Error::Cancelled);
    }
}

#[test]
fn every_command_but_delete_on_a_deleted_notification_is_rejected_as_deleted() {
    for command in every_command(t(20)) {
        if matches!(command, C::Delete { .. }) {
            continue;
        }
        given(deleted()).when(command).then_err(Error::Deleted);
    }
}

#[test]
fn deleting_a_deleted_notification_again_records_nothing() {
    given(deleted()).when(C::Delete { at: t(20) }).then(vec![]);
}

// Clock skew

#[test]
fn a_command_stamped_before_the_last_event_is_recorded_at_the_last_events_time() {
    given(delivered_then(vec![seen_at(t(50))]))
        .when(C::MarkRead { at: t(30) })
        .then(vec![read_at(t(50))]);
    given(cancelled())
        .when(C::Delete { at: t(-100) })
        .then(vec![deleted_at(t(10))]);
}

// Random command sequences

fn at() -> impl Strategy<Value = Timestamp> {
    (0i64..300).prop_map(t)
}

fn arb_create() -> impl Strategy<Value = C> {
    let all = Channel::ALL.to_vec();
    let channels = prop::sample::subsequence(all, 1..=Channel::ALL.len()).prop_shuffle();
    // Seconds after the command: mostly none, often in the future, sometimes now or past.
    let deliver_in = prop_oneof![
        2 => Just(None),
        2 => (1i64..120).prop_map(Some),
        1 => (-60i64..=0).prop_map(Some),
    ];
    (any::<u128>(), channels, deliver_in, at()).prop_map(|(id, channels, deliver_in, at)| {
        let deliver_at = deliver_in.map(|secs| at + chrono::Duration::seconds(secs));
        let content = Box::new(content(&channels, deliver_at));
        C::Create {
            id: NotificationId(uuid::Uuid::from_u128(id)),
            content,
            audience: None,
            batchable: true,
            at,
        }
    })
}

fn arb_command() -> impl Strategy<Value = C> {
    prop_oneof![
        2 => arb_create(),
        8 => (prop::sample::select(Channel::ALL), at()).prop_map(|(ch, at)| deliver(ch, at)),
        4 => at().prop_map(|at| C::MarkSeen { at }),
        4 => at().prop_map(|at| C::MarkRead { at }),
        4 => at().prop_map(|at| C::MarkUnread { at }),
        4 => at().prop_map(|at| C::Click { at }),
        4 => at().prop_map(|at| C::Archive { at }),
        4 => at().prop_map(|at| C::Unarchive { at }),
        3 => at().prop_map(|at| C::Cancel { at }),
        1 => at().prop_map(|at| C::Delete { at }),
    ]
}

/// 1 to 40 commands, the first usually a `Create`; times jump both ways.
fn arb_commands() -> impl Strategy<Value = Vec<C>> {
    let first = prop_oneof![5 => arb_create(), 1 => arb_command()];
    let rest = prop::collection::vec(arb_command(), 0..40);
    (first, rest).prop_map(|(first, rest)| [vec![first], rest].concat())
}

fn survives_storage(event: &E) -> Result<(), TestCaseError> {
    let fail = |e: serde_json::Error| TestCaseError::fail(format!("{event:?}: {e}"));
    let json = serde_json::to_string(event).map_err(fail)?;
    let back: E = serde_json::from_str(&json).map_err(fail)?;
    prop_assert_eq!(&back, event);
    Ok(())
}

fn times_are_in_order(state: &Notification) -> Result<(), TestCaseError> {
    if let Some(read_at) = state.read_at {
        let ok = state.delivered_at.is_some_and(|d| read_at >= d);
        prop_assert!(ok, "read early: {state:?}");
    }
    if let Some(delivered_at) = state.delivered_at {
        let ok = state.created_at.is_some_and(|c| delivered_at >= c);
        prop_assert!(ok, "delivered early: {state:?}");
    }
    Ok(())
}

fn run_sequence(commands: Vec<C>) -> Result<(), TestCaseError> {
    let mut state = Notification::default();
    let mut stream: Vec<E> = Vec::new();
    for command in commands {
        let before = state.clone();
        let result = state.decide(command.clone());
        prop_assert_eq!(&state, &before, "decide changed the state");
        let deleted = before.lifecycle == Lifecycle::Deleted;
        prop_assert!(
            !deleted || result.as_ref().map_or(true, Vec::is_empty),
            "deleted, yet {command:?} gave {result:?}"
        );
        for event in result.iter().flatten() {
            if let Some(last) = stream.last() {
                let in_order = event.occurred_at() >= last.occurred_at();
                prop_assert!(in_order, "{event:?} is before {last:?}");
            }
            survives_storage(event)?;
            state.apply(event.clone());
            stream.push(event.clone());
        }
        if result.is_err() {
            prop_assert_eq!(&state, &before, "a rejected command changed the state");
        }
        times_are_in_order(&state)?;
    }
    let mut replayed = Notification::default();
    stream.into_iter().for_each(|event| replayed.apply(event));
    prop_assert_eq!(replayed, state, "replay built another state");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn any_command_sequence_keeps_the_notification_consistent(commands in arb_commands()) {
        run_sequence(commands)?;
    }
}
