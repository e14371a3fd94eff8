//! Positions in the global log and the opaque cursors clients see.
//!
//! A position is the pair `(transaction, sequence)`: in PostgreSQL the writing
//! transaction's xid8 and the `global_position` bigserial; in memory both are the
//! append counter. Commit order is the lexicographic order of the pair.

use std::fmt;

/// A point in the global log. `Position::START` is before every event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub tx: i64,
    pub seq: i64,
}

impl Position {
    pub const START: Position = Position { tx: 0, seq: 0 };

    pub fn new(tx: i64, seq: i64) -> Self {
        Self { tx, seq }
    }

    /// The cursor string: 32 hex digits. Opaque to clients, but it sorts the
    /// way positions do, which keeps logs and debugging readable.
    pub fn to_cursor(self) -> String {
        format!("{:016x}{:016x}", self.tx as u64, self.seq as u64)
    }

    pub fn parse_cursor(s: &str) -> Result<Self, CursorError> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CursorError);
        }
        let tx = u64::from_str_radix(&s[..16], 16).map_err(|_| CursorError)?;
        let seq = u64::from_str_radix(&s[16..], 16).map_err(|_| CursorError)?;
        if tx > i64::MAX as u64 || seq > i64::MAX as u64 {
            return Err(CursorError);
        }
        Ok(Self::new(tx as i64, seq as i64))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tx, self.seq)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a cursor tidings issued (expected the `cursor` string of an earlier response)")]
pub struct CursorError;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn cursors_round_trip(tx in 0i64..=i64::MAX, seq in 0i64..=i64::MAX) {
            let p = Position::new(tx, seq);
            prop_assert_eq!(Position::parse_cursor(&p.to_cursor()), Ok(p));
        }

        #[test]
        fn cursors_sort_like_positions(a in (0i64..1<<40, 0i64..1<<40), b in (0i64..1<<40, 0i64..1<<40)) {
            let (pa, pb) = (Position::new(a.0, a.1), Position::new(b.0, b.1));
            prop_assert_eq!(pa.cmp(&pb), pa.to_cursor().cmp(&pb.to_cursor()));
        }

        #[test]
        fn arbitrary_strings_are_not_cursors_unless_well_formed(s in "\\PC{0,40}") {
            if let Ok(p) = Position::parse_cursor(&s) {
                prop_assert_eq!(p.to_cursor(), s.to_ascii_lowercase());
            }
        }
    }
}
