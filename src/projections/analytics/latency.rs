//! Latencies as hdrhistogram histograms (milliseconds, 3 significant digits)
//! that merge across buckets.
//!
//! In a row a histogram is kept sparse: the count at each recorded value,
//! each value the lowest of its histogram slot. Cloning one costs what was
//! recorded, not the 16–200 KiB of counters an `hdrhistogram::Histogram`
//! holds, which matters because a fold clones the rows it changes. Stored, it
//! is hdrhistogram's V2 serialization in base64, which any HdrHistogram
//! library reads. Merging is adding counts slot by slot, so the percentiles of
//! any range of buckets are exact to the histogram's precision.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Significant digits every latency histogram keeps.
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// A histogram with nothing recorded: the slot layout every latency shares.
fn layout() -> &'static Histogram<u64> {
    static LAYOUT: OnceLock<Histogram<u64>> = OnceLock::new();
    LAYOUT.get_or_init(|| Histogram::new(SIGNIFICANT_DIGITS).expect("3 digits are valid"))
}

/// Recorded latencies in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latency {
    /// Count at the lowest value of each slot recorded.
    counts: BTreeMap<u64, u64>,
}

/// Percentiles of a latency, in milliseconds (None: nothing recorded).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: Option<u64>,
    pub p90: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
}

impl Latency {
    pub fn record(&mut self, millis: u64) {
        *self
            .counts
            .entry(layout().lowest_equivalent(millis))
            .or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &Latency) {
        for (value, n) in &other.counts {
            *self.counts.entry(*value).or_insert(0) += n;
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.values().sum()
    }

    /// As an hdrhistogram histogram.
    pub fn histogram(&self) -> Histogram<u64> {
        let mut h = layout().clone();
        for (value, n) in &self.counts {
            // Auto-resizing: recording cannot fail for any u64 it accepts.
            let _ = h.record_n(*value, *n);
        }
        h
    }

    pub fn percentiles(&self) -> Percentiles {
        let count = self.count();
        let h = self.histogram();
        let at = |q: f64| (count > 0).then(|| h.value_at_quantile(q));
        Percentiles {
            count,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: (count > 0).then(|| h.max()),
        }
    }

    fn from_histogram(h: &Histogram<u64>) -> Self {
        Self {
            counts: h
                .iter_recorded()
                .map(|v| {
                    (
                        layout().lowest_equivalent(v.value_iterated_to()),
                        v.count_at_value(),
                    )
                })
                .collect(),
        }
    }
}

impl Serialize for Latency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(&self.histogram(), &mut bytes)
            .map_err(|e| serde::ser::Error::custom(format!("{e:?}")))?;
        s.serialize_str(&STANDARD.encode(bytes))
    }
}

impl<'de> Deserialize<'de> for Latency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = STANDARD
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("a latency is not base64: {e}")))?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| {
                serde::de::Error::custom(format!("a latency is not an HdrHistogram: {e:?}"))
            })?;
        Ok(Self::from_histogram(&h))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Merging bucket histograms gives the percentiles of recording
        /// everything in one, and the stored form reads back the same.
        #[test]
        fn merged_buckets_equal_one_histogram_and_survive_storage(
            buckets in prop::collection::vec(prop::collection::vec(0u64..10_000_000, 0..40), 1..6)
        ) {
            let mut merged = Latency::default();
            let mut whole = Histogram::<u64>::new(SIGNIFICANT_DIGITS).unwrap();
            for values in &buckets {
                let mut bucket = Latency::default();
                for v in values {
                    bucket.record(*v);
                    whole.record(*v).unwrap();
                }
                let stored = serde_json::to_string(&bucket).unwrap();
                let back: Latency = serde_json::from_str(&stored).unwrap();
                prop_assert_eq!(&back, &bucket);
                merged.merge(&back);
            }
            let h = merged.histogram();
            prop_assert_eq!(h.len(), whole.len());
            for q in [0.5, 0.9, 0.99, 1.0] {
                prop_assert_eq!(h.value_at_quantile(q), whole.value_at_quantile(q));
            }
        }
    }

    #[test]
    fn percentiles_are_none_when_nothing_was_recorded() {
        let p = Latency::default().percentiles();
        assert_eq!((p.count, p.p50, p.max), (0, None, None));
        let mut one = Latency::default();
        one.record(1234);
        assert_eq!(one.percentiles().p99, Some(1234));
    }

    #[test]
    fn a_stored_latency_that_is_not_a_histogram_is_refused() {
        assert!(serde_json::from_str::<Latency>(r#""bm9wZQ==""#).is_err());
        assert!(serde_json::from_str::<Latency>(r#""!!""#).is_err());
    }
}
