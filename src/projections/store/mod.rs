//! The projection store: everything a read model needs besides its fold.
//!
//! A read model supplies a `Fold` (how it reads an event, which rows an event
//! touches, and what it does to them) and its queries over `Keyed` rows. The
//! store, once per backend, owns the rest: the checkpoint committed with the
//! page, parked and skipped events with re-drive, blue/green versions with
//! the atomic switch, the maintenance lock, and the numbered stream updates.
//! The engine (`engine`, `leader`) drives it like any other projection.
//!
//! Rows are documents under a string key with one integer sort column (a due
//! time, a bucket start): enough for "get by key" and "range by sort", which
//! is what timers and counters ask. A read model whose queries need more
//! indexes than that (the inbox) keeps tables of its own.

pub mod memory;
pub mod postgres;
pub mod postgres_rows;

use std::collections::{BTreeSet, HashMap};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::inbox::fold::{held_reason, EventRef, Held, Refusal};
use crate::storage::{LoggedEvent, Position, SharedEvent};
use crate::streams::updates::NewUpdate;

/// A read model as a fold over the log.
pub trait Fold: Send + Sync + 'static {
    /// The projection's name: in the registry, the checkpoint, parked events.
    const NAME: &'static str;
    /// An event as this read model reads it.
    type Input: Send;
    /// One row of the read model.
    type Row: Serialize
        + DeserializeOwned
        + Clone
        + PartialEq
        + std::fmt::Debug
        + Send
        + Sync
        + 'static;

    /// Reads `event`: None when it does not concern this read model, an error
    /// (the reason) when it does but cannot be read. An error refuses the
    /// event: it is retried, then parked.
    fn read(&self, event: &LoggedEvent) -> Result<Option<Self::Input>, String>;

    /// The keys of the rows folding `input` reads or writes (loaded first).
    fn keys(&self, input: &Self::Input, event: &LoggedEvent) -> Vec<String>;

    /// Those of `keys` that no row can be under before this event (the row
    /// of a notification its creation starts): not looked up. A key named
    /// earlier in the same page is never looked up again either.
    fn new_keys(&self, _input: &Self::Input, _event: &LoggedEvent) -> Vec<String> {
        Vec::new()
    }

    /// Folds one event into `rows`. An error (the reason) refuses the event:
    /// nothing it did to `rows` stays.
    fn fold(
        &self,
        input: Self::Input,
        event: &LoggedEvent,
        rows: &mut Rows<Self::Row>,
    ) -> Result<(), String>;
}

/// A row with its sort value.
#[derive(Debug, Clone, PartialEq)]
pub struct Keyed<R> {
    pub key: String,
    pub sort: i64,
    pub row: R,
}

/// A row a page changed: its key, and its sort and row (None: deleted).
pub(crate) type Change<R> = (String, Option<(i64, R)>);

/// The row an update shows, and how it is rendered.
#[derive(Debug)]
struct Shown<R> {
    key: String,
    render: fn(&str, &R) -> Option<String>,
}

#[derive(Debug, Clone)]
struct Slot<R> {
    /// (sort, row); None: no row under the key.
    value: Option<(i64, R)>,
    changed: bool,
}

/// The rows a page works on: those its events' keys name, as they are before
/// the page, changed by the fold. Also collects the page's stream updates.
#[derive(Debug)]
pub struct Rows<R> {
    slots: HashMap<String, Slot<R>>,
    updates: Vec<NewUpdate>,
    /// The event being folded (stream updates name it).
    position: Position,
    /// A key the fold used without declaring it in `keys`.
    undeclared: Option<String>,
    /// The slots the event being folded replaced, as they were before it:
    /// moved out, not cloned, so undoing a refused event costs nothing more.
    undo: Vec<(String, Slot<R>)>,
    /// Beside each update: the row it shows, when a page keeps only the
    /// last update of each and renders it from the row the page leaves
    /// (`announce_row`).
    shows: Vec<Option<Shown<R>>>,
}

impl<R: Clone> Rows<R> {
    pub(crate) fn new(loaded: impl IntoIterator<Item = (String, Option<(i64, R)>)>) -> Self {
        Self {
            slots: loaded
                .into_iter()
                .map(|(k, value)| {
                    (
                        k,
                        Slot {
                            value,
                            changed: false,
                        },
                    )
                })
                .collect(),
            updates: Vec::new(),
            position: Position::START,
            undeclared: None,
            undo: Vec::new(),
            shows: Vec::new(),
        }
    }

    /// Sets the slot under `key`, remembering the first value this event replaced.
    fn replace(&mut self, key: &str, value: Option<(i64, R)>) {
        let Some(slot) = self.slot(key) else {
            return;
        };
        let old = std::mem::replace(
            slot,
            Slot {
                value,
                changed: true,
            },
        );
        if !self.undo.iter().any(|(k, _)| k == key) {
            self.undo.push((key.to_owned(), old));
        }
    }

    /// Puts back what the event being folded replaced.
    fn undo(&mut self) {
        for (key, slot) in self.undo.drain(..) {
            self.slots.insert(key, slot);
        }
    }

    fn slot(&mut self, key: &str) -> Option<&mut Slot<R>> {
        if !self.slots.contains_key(key) && self.undeclared.is_none() {
            self.undeclared = Some(key.to_owned());
        }
        self.slots.get_mut(key)
    }

    /// The row under `key`, if any.
    pub fn get(&mut self, key: &str) -> Option<&R> {
        self.slot(key)?.value.as_ref().map(|(_, r)| r)
    }

    /// Sets the row under `key`.
    pub fn put(&mut self, key: &str, sort: i64, row: R) {
        self.replace(key, Some((sort, row)));
    }

    /// Removes the row under `key` (nothing when there is none).
    pub fn remove(&mut self, key: &str) {
        if self.slot(key).is_some_and(|s| s.value.is_some()) {
            self.replace(key, None);
        }
    }

    /// Records a stream update for `topic`, committed with the page.
    pub fn announce(&mut self, topic: String, kind: &'static str, data: &impl Serialize) {
        let data = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
        self.push(topic, kind, data, None);
    }

    /// Records a stream update for `topic` that shows the row under `key`
    /// as the page leaves it, rendered by `render` (None: nothing to show).
    /// Of a page's updates of one topic, kind and row only the last stays,
    /// and the row is rendered once, when the page's updates are taken: for
    /// a row that changes with every event (a minute's counters),
    /// subscribers get its last state once per page.
    pub fn announce_row(
        &mut self,
        topic: String,
        kind: &'static str,
        key: &str,
        render: fn(&str, &R) -> Option<String>,
    ) {
        self.slot(key); // a key the fold did not name is a defect, as in `put`
        let shown = Shown {
            key: key.to_owned(),
            render,
        };
        self.push(topic, kind, String::new(), Some(shown));
    }

    fn push(&mut self, topic: String, kind: &'static str, data: String, shown: Option<Shown<R>>) {
        self.updates.push(NewUpdate {
            topic,
            kind,
            data: data.into(),
            position: self.position,
        });
        self.shows.push(shown);
    }

    /// The rows the page changed: (key, Some((sort, row))) to write, None to delete.
    pub(crate) fn changes(&self) -> impl Iterator<Item = (&str, Option<&(i64, R)>)> {
        self.slots
            .iter()
            .filter(|(_, s)| s.changed)
            .map(|(k, s)| (k.as_str(), s.value.as_ref()))
    }

    /// The page's stream updates and the rows it changed (None: deleted),
    /// moved out.
    pub(crate) fn finish(mut self) -> (Vec<NewUpdate>, Vec<Change<R>>) {
        let updates = self.take_updates();
        let changes = self
            .slots
            .into_iter()
            .filter(|(_, s)| s.changed)
            .map(|(k, s)| (k, s.value))
            .collect();
        (updates, changes)
    }

    pub(crate) fn take_updates(&mut self) -> Vec<NewUpdate> {
        let updates = std::mem::take(&mut self.updates);
        let shows = std::mem::take(&mut self.shows);
        if shows.iter().all(Option::is_none) {
            return updates;
        }
        // The last update of each shown row, rendered from the row.
        let mut seen = BTreeSet::new();
        let mut kept: Vec<NewUpdate> = updates
            .into_iter()
            .zip(shows)
            .rev()
            .filter_map(|(mut update, shown)| {
                let Some(Shown { key, render }) = shown else {
                    return Some(update);
                };
                if !seen.insert((update.topic.clone(), update.kind, key.clone())) {
                    return None;
                }
                let (_, row) = self.slots.get(&key)?.value.as_ref()?;
                update.data = render(&key, row)?.into();
                Some(update)
            })
            .collect();
        kept.reverse();
        kept
    }
}

/// An event read for folding, with the keys it touches.
pub(crate) struct Read<I> {
    event: SharedEvent,
    input: Result<Option<I>, String>,
}

/// The keys a page of events touches, each once.
pub(crate) struct PageKeys {
    /// Rows that may exist: looked up.
    pub load: Vec<String>,
    /// Rows that cannot exist yet (first named by an event that starts them).
    pub fresh: Vec<String>,
}

impl PageKeys {
    /// Every key, with the rows found for those looked up.
    pub fn with<R>(
        self,
        mut found: impl FnMut(&str) -> Option<(i64, R)>,
    ) -> impl Iterator<Item = (String, Option<(i64, R)>)> {
        let PageKeys { load, fresh } = self;
        load.into_iter()
            .map(move |k| {
                let row = found(&k);
                (k, row)
            })
            .chain(fresh.into_iter().map(|k| (k, None)))
    }
}

/// Reads a page of events for `fold`; the keys they touch.
pub(crate) fn read_page<F: Fold>(
    fold: &F,
    events: &[SharedEvent],
) -> (Vec<Read<F::Input>>, PageKeys) {
    let mut named: BTreeSet<String> = BTreeSet::new();
    let mut keys = PageKeys {
        load: Vec::new(),
        fresh: Vec::new(),
    };
    let reads = events
        .iter()
        .map(|event| {
            let input = fold.read(event);
            if let Ok(Some(input)) = &input {
                let new = fold.new_keys(input, event);
                for key in fold.keys(input, event) {
                    if named.insert(key.clone()) {
                        if new.contains(&key) {
                            keys.fresh.push(key);
                        } else {
                            keys.load.push(key);
                        }
                    }
                }
            }
            Read {
                event: event.clone(),
                input,
            }
        })
        .collect();
    (reads, keys)
}

/// Folds read events (in log order) into `rows`. Events at `skipped`
/// positions are passed over; events of aggregates in `held` are refused as
/// held; an event that cannot be read or folded is refused, leaves `rows` as
/// they were, and holds its aggregate back from then on.
pub(crate) fn fold_page<F: Fold>(
    fold: &F,
    rows: &mut Rows<F::Row>,
    reads: Vec<Read<F::Input>>,
    held: &mut Held,
    skipped: &BTreeSet<Position>,
) -> Vec<Refusal> {
    let mut refused = Vec::new();
    for Read { event, input } in reads {
        if skipped.contains(&event.position) {
            continue;
        }
        if let Some(&behind) = held.get(&event.aggregate_id) {
            refused.push(Refusal {
                event: EventRef::of(&event),
                reason: held_reason(behind),
                behind: Some(behind),
            });
            continue;
        }
        let input = match input {
            Ok(Some(input)) => input,
            Ok(None) => continue,
            Err(reason) => {
                held.insert(event.aggregate_id.clone(), event.position);
                refused.push(Refusal::failed(&event, &reason));
                continue;
            }
        };
        let updates = rows.updates.len();
        rows.undo.clear();
        rows.position = event.position;
        let mut outcome = fold.fold(input, &event, rows);
        if let Some(key) = rows.undeclared.take() {
            outcome = Err(format!(
                "defect in the {} fold: it used the row `{key}` without naming it in its keys",
                F::NAME
            ));
        }
        if let Err(reason) = outcome {
            rows.undo();
            rows.updates.truncate(updates);
            rows.shows.truncate(updates);
            held.insert(event.aggregate_id.clone(), event.position);
            refused.push(Refusal::failed(&event, &reason));
        }
    }
    refused
}

/// The aggregates among `events` held back by `held` (the rest are free).
pub(crate) fn held_among(held: &Held, events: &[SharedEvent]) -> Held {
    events
        .iter()
        .filter_map(|e| {
            held.get(&e.aggregate_id)
                .map(|cause| (e.aggregate_id.clone(), *cause))
        })
        .collect()
}

/// Queries a store answers for any fold's rows.
#[async_trait::async_trait]
pub trait RowReader<R>: Send + Sync {
    /// The row under `key` in the live version.
    async fn get(&self, key: &str) -> Result<Option<Keyed<R>>, crate::storage::StorageError>;

    /// Rows with `from <= sort < to`, by sort then key, after `(sort, key)`
    /// of a previous page, at most `limit`.
    async fn range(
        &self,
        from: i64,
        to: i64,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<Keyed<R>>, crate::storage::StorageError>;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    /// Counts events per `data.key`; refuses `{"bad": true}`; touches an
    /// undeclared row for `{"sneaky": true}`.
    struct Counter;

    impl Fold for Counter {
        const NAME: &'static str = "counter";
        type Input = serde_json::Value;
        type Row = u64;

        fn read(&self, event: &LoggedEvent) -> Result<Option<serde_json::Value>, String> {
            Ok(Some(event.payload.clone()))
        }

        fn keys(&self, input: &serde_json::Value, _: &LoggedEvent) -> Vec<String> {
            vec![input["key"].as_str().unwrap_or("none").to_owned()]
        }

        fn new_keys(&self, input: &serde_json::Value, e: &LoggedEvent) -> Vec<String> {
            if input["new"] == true {
                self.keys(input, e)
            } else {
                vec![]
            }
        }

        fn fold(
            &self,
            input: serde_json::Value,
            _: &LoggedEvent,
            rows: &mut Rows<u64>,
        ) -> Result<(), String> {
            let key = input["key"].as_str().unwrap_or("none").to_owned();
            let n = rows.get(&key).copied().unwrap_or(0) + 1;
            rows.put(&key, n as i64, n);
            rows.announce(format!("counter:{key}"), "changed", &n);
            rows.announce_row("total".into(), "latest", &key, |_, n| Some(n.to_string()));
            if input["sneaky"] == true {
                rows.put("elsewhere", 0, 0);
            }
            if input["bad"] == true {
                return Err("bad on purpose".into());
            }
            Ok(())
        }
    }

    fn event(n: i64, aggregate: &str, payload: serde_json::Value) -> SharedEvent {
        Arc::new(LoggedEvent {
            position: Position::new(n, n),
            aggregate_type: "Test".into(),
            aggregate_id: aggregate.into(),
            sequence: n,
            event_type: "Happened".into(),
            event_version: "1.0".into(),
            payload,
            metadata: Arc::new(json!({})),
            recorded_at: chrono::Utc::now(),
            unreadable: None,
        })
    }

    fn fold(events: &[SharedEvent]) -> (Rows<u64>, Vec<Refusal>) {
        let (reads, keys) = read_page(&Counter, events);
        let mut rows = Rows::new(keys.with(|_| None));
        let refused = fold_page(
            &Counter,
            &mut rows,
            reads,
            &mut Held::new(),
            &BTreeSet::new(),
        );
        (rows, refused)
    }

    fn changed(rows: &Rows<u64>) -> Vec<(String, Option<u64>)> {
        let mut out: Vec<_> = rows
            .changes()
            .map(|(k, v)| (k.to_owned(), v.map(|(_, r)| *r)))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_refused_event_leaves_no_change_and_no_update_and_holds_its_aggregate() {
        let (mut rows, refused) = fold(&[
            event(1, "a", json!({"key": "x"})),
            event(2, "a", json!({"key": "x", "bad": true})),
            event(3, "a", json!({"key": "x"})),
            event(4, "b", json!({"key": "x"})),
        ]);
        assert_eq!(
            changed(&rows),
            [("x".to_owned(), Some(2))],
            "events 1 and 4"
        );
        let updates = rows.take_updates();
        let positions: Vec<(i64, &str)> =
            updates.iter().map(|u| (u.position.seq, u.kind)).collect();
        assert_eq!(
            positions,
            [(1, "changed"), (4, "changed"), (4, "latest")],
            "the refused event's updates are dropped, of `latest` only the last stays"
        );
        assert_eq!(&*updates[1].data, "2");
        let why: Vec<(i64, Option<Position>)> = refused
            .iter()
            .map(|r| (r.event.position.seq, r.behind))
            .collect();
        assert_eq!(
            why,
            [(2, None), (3, Some(Position::new(2, 2)))],
            "refused, then held behind it"
        );
        assert_eq!(refused[0].reason, "bad on purpose");
    }

    #[test]
    fn a_page_keeps_the_last_update_of_each_row_it_shows_rendered_as_the_page_leaves_it() {
        let (mut rows, _) = fold(&[
            event(1, "a", json!({"key": "x"})),
            event(2, "b", json!({"key": "y"})),
            event(3, "c", json!({"key": "x"})),
        ]);
        let latest: Vec<(i64, String)> = rows
            .take_updates()
            .iter()
            .filter(|u| u.kind == "latest")
            .map(|u| (u.position.seq, u.data.to_string()))
            .collect();
        assert_eq!(
            latest,
            [(2, "1".to_owned()), (3, "2".to_owned())],
            "y's only update, then x's last, showing x after the page"
        );
    }

    #[test]
    fn only_rows_that_may_exist_are_looked_up_and_each_once() {
        let (_, keys) = read_page(
            &Counter,
            &[
                event(1, "a", json!({"key": "x", "new": true})),
                event(2, "a", json!({"key": "x"})),
                event(3, "b", json!({"key": "y"})),
                event(4, "c", json!({"key": "y", "new": true})),
            ],
        );
        assert_eq!(keys.fresh, ["x"], "started in the page: never looked up");
        assert_eq!(keys.load, ["y"], "named first by an event that may find it");
    }

    #[test]
    fn a_fold_that_uses_a_row_it_did_not_name_is_refused_as_a_defect() {
        let (rows, refused) = fold(&[event(1, "a", json!({"key": "x", "sneaky": true}))]);
        assert!(changed(&rows).is_empty(), "nothing of it stays");
        assert!(
            refused[0].reason.contains("without naming it in its keys"),
            "{}",
            refused[0].reason
        );
    }
}
