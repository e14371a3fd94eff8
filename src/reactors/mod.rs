//! Reactors turn what the log says into commands; timers fire commands when
//! a time the log recorded has come.

pub mod timers;
