//! An experiment's results from its outcome rows: per variant (and the
//! holdout) the users assigned and the notifications exposed; per metric
//! the count and rate over the exposed, and against the control (the
//! first variant) the difference with its 95 % interval, the lift and the
//! z-test p-value; and the sample-ratio check on the assigned counts
//! against the shares each assignment was drawn under. `as_of` leaves out
//! what happened after it.

use std::collections::BTreeMap;

use super::outcomes::Row;
use crate::domain::experiment::{Experiment, Metric, Outcome};
use crate::domain::statistics::{compare, sample_ratio, Comparison, SampleRatio};
use crate::domain::Timestamp;

#[derive(Debug, Clone, PartialEq)]
pub struct MetricResult {
    pub name: String,
    pub count: u64,
    /// Over the exposed (None: none exposed).
    pub rate: Option<f64>,
    /// Against the control (None for the control itself, or no data).
    pub against_control: Option<Comparison>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VariantResult {
    pub name: String,
    pub assigned: u64,
    pub exposed: u64,
    pub metrics: Vec<MetricResult>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Results {
    pub variants: Vec<VariantResult>,
    /// Users held out.
    pub holdout_assigned: u64,
    /// None with fewer than two groups assigned.
    pub sample_ratio: Option<SampleRatio>,
}

fn reached(
    at: Option<Timestamp>,
    exposed_at: Timestamp,
    metric: &Metric,
    as_of: Option<Timestamp>,
) -> bool {
    match at {
        None => false,
        Some(t) => {
            as_of.is_none_or(|cut| t <= cut)
                && metric
                    .within_seconds
                    .is_none_or(|s| t - exposed_at <= chrono::TimeDelta::seconds(s as i64))
        }
    }
}

/// The results of `experiment` from its `rows` (others' are skipped), as
/// of a time.
pub fn results(
    id: &str,
    experiment: &Experiment,
    rows: &[Row],
    metrics: &[Metric],
    as_of: Option<Timestamp>,
) -> Results {
    let Some(design) = &experiment.design else {
        return Results {
            variants: Vec::new(),
            holdout_assigned: 0,
            sample_ratio: None,
        };
    };
    let names: Vec<&str> = design.variants.iter().map(|v| v.name.as_str()).collect();
    let index = |name: &str| names.iter().position(|n| *n == name);
    let groups = names.len() + 1;
    let mut assigned = vec![0u64; groups];
    // The shares the assignments were drawn under, summed.
    let mut expected = vec![0f64; groups];
    let mut exposed = vec![0u64; names.len()];
    let mut counts = vec![vec![0u64; metrics.len()]; names.len()];
    let mut shares_by_version: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.experiment().as_str() == id) {
        match row {
            Row::Assigned {
                variant,
                weights_version,
                assigned_at,
                ..
            } => {
                if as_of.is_some_and(|cut| *assigned_at > cut) {
                    continue;
                }
                let slot = match variant {
                    None => Some(0),
                    Some(v) => index(v).map(|i| i + 1),
                };
                let Some(slot) = slot else { continue };
                assigned[slot] += 1;
                let shares = shares_by_version
                    .entry(*weights_version)
                    .or_insert_with(|| experiment.shares(*weights_version));
                let total: f64 = shares.iter().sum();
                for (e, s) in expected.iter_mut().zip(shares.iter()) {
                    *e += s / total.max(f64::MIN_POSITIVE);
                }
            }
            Row::Exposed {
                variant,
                exposed_at,
                delivered_at,
                seen_at,
                read_at,
                clicked_at,
                ..
            } => {
                if as_of.is_some_and(|cut| *exposed_at > cut) {
                    continue;
                }
                let Some(i) = index(variant) else { continue };
                exposed[i] += 1;
                for (m, metric) in metrics.iter().enumerate() {
                    let at = match metric.outcome {
                        Outcome::Delivered => *delivered_at,
                        Outcome::Seen => *seen_at,
                        Outcome::Read => *read_at,
                        Outcome::Clicked => *clicked_at,
                    };
                    if reached(at, *exposed_at, metric, as_of) {
                        counts[i][m] += 1;
                    }
                }
            }
        }
    }
    let variants = names
        .iter()
        .enumerate()
        .map(|(i, name)| VariantResult {
            name: (*name).to_owned(),
            assigned: assigned[i + 1],
            exposed: exposed[i],
            metrics: metrics
                .iter()
                .enumerate()
                .map(|(m, metric)| MetricResult {
                    name: metric.name.as_str().to_owned(),
                    count: counts[i][m],
                    rate: (exposed[i] > 0).then(|| counts[i][m] as f64 / exposed[i] as f64),
                    against_control: (i > 0)
                        .then(|| compare((counts[0][m], exposed[0]), (counts[i][m], exposed[i])))
                        .flatten(),
                })
                .collect(),
        })
        .collect();
    // The holdout joins the check only when it has a share.
    let (observed, shares): (Vec<u64>, Vec<f64>) = assigned
        .iter()
        .zip(&expected)
        .enumerate()
        .filter(|(i, _)| *i > 0 || design.holdout > 0)
        .map(|(_, (a, e))| (*a, *e))
        .unzip();
    Results {
        variants,
        holdout_assigned: assigned[0],
        sample_ratio: sample_ratio(&observed, &shares),
    }
}
