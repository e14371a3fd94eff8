//! What analytics answers: buckets of a width over a time range, narrowed to
//! a category and a channel, merged into totals.

use std::collections::BTreeMap;

use serde::Serialize;

use super::latency::Latency;
use super::{Cell, Counts, Granularity, Row};
use crate::domain::contact::TenantId;
use crate::domain::{Category, Channel, Timestamp};
use crate::projections::store::RowReader;
use crate::storage::StorageError;

/// Which cells count.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub category: Option<Category>,
    pub channel: Option<Channel>,
    pub tenant: Option<TenantId>,
}

impl Filter {
    fn admits(&self, cell: &Cell) -> bool {
        self.category.as_ref().is_none_or(|c| *c == cell.category)
            && self.channel.is_none_or(|c| c == cell.channel)
            && self
                .tenant
                .as_ref()
                .is_none_or(|t| Some(t) == cell.tenant.as_ref())
    }
}

/// Cells added up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub counts: Counts,
    /// Deliveries to the inbox: what engagement rates divide by.
    pub in_app_delivered: u64,
    pub delivery: Latency,
    pub seen: Latency,
    pub read: Latency,
}

/// Ratios of the counts (None where the divisor is 0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rates {
    /// delivered / (created − suppressed − digested): what was to be
    /// delivered on its own.
    pub delivery: Option<f64>,
    /// seen, read, clicked / in-app deliveries.
    pub seen: Option<f64>,
    pub read: Option<f64>,
    pub click: Option<f64>,
}

fn ratio(n: u64, of: u64) -> Option<f64> {
    (of > 0).then(|| n as f64 / of as f64)
}

impl Totals {
    pub fn add(&mut self, cell: &Cell) {
        self.counts.add(&cell.counts);
        if cell.channel == Channel::InApp {
            self.in_app_delivered += cell.counts.delivered;
        }
        self.delivery.merge(&cell.delivery);
        self.seen.merge(&cell.seen);
        self.read.merge(&cell.read);
    }

    pub fn merge(&mut self, other: &Totals) {
        self.counts.add(&other.counts);
        self.in_app_delivered += other.in_app_delivered;
        self.delivery.merge(&other.delivery);
        self.seen.merge(&other.seen);
        self.read.merge(&other.read);
    }

    pub fn rates(&self) -> Rates {
        let c = &self.counts;
        Rates {
            delivery: ratio(c.delivered, c.deliverable()),
            seen: ratio(c.seen, self.in_app_delivered),
            read: ratio(c.read, self.in_app_delivered),
            click: ratio(c.clicked, self.in_app_delivered),
        }
    }
}

/// Rows read per statement.
const PAGE: usize = 500;

/// The buckets of width `g` starting in `from..to` (ms) that hold anything,
/// by start, each narrowed to `filter`.
pub async fn buckets(
    reader: &dyn RowReader<Row>,
    g: Granularity,
    from: i64,
    to: i64,
    filter: &Filter,
) -> Result<Vec<(i64, Totals)>, StorageError> {
    let (low, high) = (g.sort(g.start_of(from)), g.sort(to));
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = reader.range(low, high, after.take(), PAGE).await?;
        let full = page.len() == PAGE;
        for keyed in &page {
            if let Row::Bucket { cells } = &keyed.row {
                let mut totals = Totals::default();
                for cell in cells.iter().filter(|c| filter.admits(c)) {
                    totals.add(cell);
                }
                let start = keyed.sort - g.sort(0);
                out.push((start, totals));
            }
        }
        match page.last() {
            Some(last) if full => after = Some((last.sort, last.key.clone())),
            _ => return Ok(out),
        }
    }
}

/// What the `analytics` topic says of the current minute.
#[derive(Debug, Serialize)]
pub struct MinuteUpdate {
    pub start: Timestamp,
    pub counts: Counts,
    pub by_channel: BTreeMap<Channel, Counts>,
}

pub fn minute_update(start: i64, cells: &[Cell]) -> MinuteUpdate {
    let mut counts = Counts::default();
    let mut by_channel: BTreeMap<Channel, Counts> = BTreeMap::new();
    for cell in cells {
        counts.add(&cell.counts);
        by_channel
            .entry(cell.channel)
            .or_default()
            .add(&cell.counts);
    }
    MinuteUpdate {
        start: Timestamp::from_timestamp_millis(start).unwrap_or_default(),
        counts,
        by_channel,
    }
}
