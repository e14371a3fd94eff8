//! States whose every event carries the whole of the part it sets, and
//! which change of that part it is: the last event of each type is then the
//! whole state, so reading one costs a few events however long its history
//! (a recipient changed ten thousand times reads like one changed once).

/// A state its last event of each type makes whole.
pub trait Superseding {
    type Event;
    /// Every event type its stream holds; each sets its part whole.
    const EVENT_TYPES: &'static [&'static str];
    /// Whether `event` says which change of its part it is. Events recorded
    /// before that was recorded do not: a state with one of them among its
    /// last events is folded from its whole stream.
    fn numbered(event: &Self::Event) -> bool;
}
