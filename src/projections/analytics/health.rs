//! The health score: 0–100, a weighted sum of components, each scored 0–1
//! against its target.
//!
//! - `delivery_rate` (delivered / (created − suppressed − digested) in the window) and
//!   `engagement_rate` (read / in-app deliveries) score `value / target`,
//!   at most 1;
//! - `delivery_latency_p99_ms` and `projection_lag_ms` score
//!   `target / value`, at most 1 (at or under the target: 1);
//! - `dependencies` (the share of dependencies that answer) scores its value.
//!
//! A component without data in the window (no notification created, none
//! delivered) scores 1: nothing went wrong. One that cannot be known (the
//! event store does not answer, so neither the window nor the lag can be
//! read) scores 0. Both show `value: null`. Each component contributes
//! `100 × weight × score / (sum of weights)`; the score is the sum, rounded.

use serde::Serialize;

use super::query::Totals;

/// Targets and weights (settings; see `config::HealthScore`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Targets {
    pub delivery_rate: f64,
    pub delivery_rate_weight: f64,
    pub engagement_rate: f64,
    pub engagement_rate_weight: f64,
    pub delivery_p99_ms: f64,
    pub delivery_p99_weight: f64,
    pub lag_ms: f64,
    pub lag_weight: f64,
    pub dependencies_weight: f64,
}

impl Default for Targets {
    fn default() -> Self {
        Self {
            delivery_rate: 0.99,
            delivery_rate_weight: 30.0,
            engagement_rate: 0.2,
            engagement_rate_weight: 20.0,
            delivery_p99_ms: 1_000.0,
            delivery_p99_weight: 20.0,
            lag_ms: 1_000.0,
            lag_weight: 15.0,
            dependencies_weight: 15.0,
        }
    }
}

/// What the score is computed from.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The analytics of the window; None: it cannot be read.
    pub window: Option<Totals>,
    /// The oldest unapplied event's age over every projection, ms; None:
    /// it cannot be read.
    pub lag_ms: Option<u64>,
    /// Dependencies that answer, of how many.
    pub dependencies_up: u32,
    pub dependencies: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Component {
    pub name: &'static str,
    /// None: no data in the window (scored 1).
    pub value: Option<f64>,
    pub target: f64,
    pub weight: f64,
    /// Score points this component gives, 0 to 100 × its share of the weights.
    pub contribution: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    pub score: u32,
    pub components: Vec<Component>,
}

/// At least `target` is good.
fn at_least(value: Option<f64>, target: f64) -> f64 {
    match value {
        Some(v) if target > 0.0 => (v / target).clamp(0.0, 1.0),
        _ => 1.0,
    }
}

/// At most `target` is good.
fn at_most(value: Option<f64>, target: f64) -> f64 {
    match value {
        Some(v) if v > target => (target / v).clamp(0.0, 1.0),
        _ => 1.0,
    }
}

/// `score` of a component that cannot be known: 0.
fn known(value: Option<f64>, is_known: bool, score: impl Fn(Option<f64>) -> f64) -> f64 {
    if is_known {
        score(value)
    } else {
        0.0
    }
}

pub fn score(targets: &Targets, inputs: &Inputs) -> Health {
    let window = inputs.window.is_some();
    let totals = inputs.window.clone().unwrap_or_default();
    let rates = totals.rates();
    let p99 = totals.delivery.percentiles().p99.map(|v| v as f64);
    let lag = inputs.lag_ms.map(|l| l as f64);
    let deps = (inputs.dependencies > 0)
        .then(|| inputs.dependencies_up as f64 / inputs.dependencies as f64);
    let parts = [
        (
            "delivery_rate",
            rates.delivery,
            targets.delivery_rate,
            targets.delivery_rate_weight,
            known(rates.delivery, window, |v| {
                at_least(v, targets.delivery_rate)
            }),
        ),
        (
            "engagement_rate",
            rates.read,
            targets.engagement_rate,
            targets.engagement_rate_weight,
            known(rates.read, window, |v| at_least(v, targets.engagement_rate)),
        ),
        (
            "delivery_latency_p99_ms",
            p99,
            targets.delivery_p99_ms,
            targets.delivery_p99_weight,
            known(p99, window, |v| at_most(v, targets.delivery_p99_ms)),
        ),
        (
            "projection_lag_ms",
            lag,
            targets.lag_ms,
            targets.lag_weight,
            known(lag, lag.is_some(), |v| at_most(v, targets.lag_ms)),
        ),
        (
            "dependencies",
            deps,
            1.0,
            targets.dependencies_weight,
            deps.unwrap_or(1.0),
        ),
    ];
    let total: f64 = parts.iter().map(|p| p.3).sum();
    let components: Vec<Component> = parts
        .into_iter()
        .map(|(name, value, target, weight, score)| Component {
            name,
            value,
            target,
            weight,
            contribution: if total > 0.0 {
                round2(100.0 * weight * score / total)
            } else {
                0.0
            },
        })
        .collect();
    let sum: f64 = components.iter().map(|c| c.contribution).sum();
    Health {
        score: if total > 0.0 {
            sum.round().clamp(0.0, 100.0) as u32
        } else {
            100
        },
        components,
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projections::analytics::Counts;

    fn inputs(created: u64, delivered: u64, read: u64, lag_ms: u64, up: u32) -> Inputs {
        let mut window = Totals {
            counts: Counts {
                created,
                delivered,
                read,
                ..Counts::default()
            },
            in_app_delivered: delivered,
            ..Totals::default()
        };
        for _ in 0..delivered {
            window.delivery.record(100);
        }
        Inputs {
            window: Some(window),
            lag_ms: Some(lag_ms),
            dependencies_up: up,
            dependencies: 2,
        }
    }

    #[test]
    fn all_targets_met_score_100_and_each_shortfall_costs_its_weight() {
        let t = Targets::default();
        let good = score(&t, &inputs(100, 100, 50, 0, 2));
        assert_eq!(good.score, 100);
        assert_eq!(good.components.len(), 5);
        // Half the deliveries: the delivery rate scores about 0.505 of its 30.
        let half = score(&t, &inputs(100, 50, 25, 0, 2));
        let rate = &half.components[0];
        assert_eq!(rate.value, Some(0.5));
        assert!((rate.contribution - 30.0 * 0.5 / 0.99).abs() < 0.01);
        assert_eq!(
            half.score,
            (100.0 - 30.0 + 30.0 * 0.5 / 0.99_f64).round() as u32
        );
        // One dependency of two down: half of its 15.
        let down = score(&t, &inputs(100, 100, 50, 0, 1));
        assert_eq!(down.score, 93);
        // Lag at 4× the target: a quarter of its 15.
        let lagging = score(&t, &inputs(100, 100, 50, 4_000, 2));
        assert_eq!(lagging.components[3].contribution, 3.75);
    }

    #[test]
    fn what_cannot_be_read_scores_nothing() {
        let down = Inputs {
            window: None,
            lag_ms: None,
            dependencies_up: 1,
            dependencies: 2,
        };
        let h = score(&Targets::default(), &down);
        assert!(h
            .components
            .iter()
            .all(|c| c.name == "dependencies" || c.value.is_none()));
        assert_eq!(h.score, 8, "half of the dependencies' 15, nothing else");
    }

    #[test]
    fn an_empty_window_is_healthy_and_says_it_has_no_values() {
        let h = score(&Targets::default(), &inputs(0, 0, 0, 0, 2));
        assert_eq!(h.score, 100);
        assert_eq!(h.components[0].value, None);
        assert_eq!(h.components[2].value, None);
    }
}
