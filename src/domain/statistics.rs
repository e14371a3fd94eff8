//! The statistics of an experiment's results: a variant's rate against
//! the control's (the difference with its 95 % confidence interval, the
//! relative lift, a two-proportion z-test), and the sample-ratio check (a
//! chi-square goodness-of-fit test of the assigned counts against the
//! shares the weights ask for), flagged below p = 0.001 as GrowthBook and
//! Statsig do. Distributions from statrs.

use statrs::distribution::{ChiSquared, ContinuousCDF, Normal};

/// The sample-ratio check flags a p-value below this.
pub const SRM_THRESHOLD: f64 = 0.001;

/// The two-sided 95 % quantile of the standard normal.
fn z95() -> f64 {
    Normal::standard().inverse_cdf(0.975)
}

/// A variant's rate against the control's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// The variant's rate minus the control's.
    pub difference: f64,
    /// Its 95 % confidence interval (unpooled standard error).
    pub ci_low: f64,
    pub ci_high: f64,
    /// The difference over the control's rate (None when the control's is
    /// 0); its interval is the difference's over the control's rate.
    pub lift: Option<f64>,
    pub lift_ci_low: Option<f64>,
    pub lift_ci_high: Option<f64>,
    /// The two-proportion z statistic (pooled standard error).
    pub z: f64,
    /// Its two-sided p-value.
    pub p_value: f64,
}

/// `successes` of `trials` in a variant against the control's; None when
/// either has no trials.
pub fn compare(control: (u64, u64), variant: (u64, u64)) -> Option<Comparison> {
    let (x0, n0) = control;
    let (x1, n1) = variant;
    if n0 == 0 || n1 == 0 {
        return None;
    }
    let (x0, n0, x1, n1) = (x0 as f64, n0 as f64, x1 as f64, n1 as f64);
    let (p0, p1) = (x0 / n0, x1 / n1);
    let difference = p1 - p0;
    let unpooled = (p0 * (1.0 - p0) / n0 + p1 * (1.0 - p1) / n1).sqrt();
    let margin = z95() * unpooled;
    let pooled_p = (x0 + x1) / (n0 + n1);
    let pooled = (pooled_p * (1.0 - pooled_p) * (1.0 / n0 + 1.0 / n1)).sqrt();
    let (z, p_value) = if pooled > 0.0 {
        let z = difference / pooled;
        (z, 2.0 * (1.0 - Normal::standard().cdf(z.abs())))
    } else {
        // Both rates 0 or both 1: no evidence of a difference.
        (0.0, 1.0)
    };
    let relative = |d: f64| (p0 > 0.0).then(|| d / p0);
    Some(Comparison {
        difference,
        ci_low: difference - margin,
        ci_high: difference + margin,
        lift: relative(difference),
        lift_ci_low: relative(difference - margin),
        lift_ci_high: relative(difference + margin),
        z,
        p_value,
    })
}

/// The sample-ratio check's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleRatio {
    pub chi_square: f64,
    pub degrees_of_freedom: u64,
    pub p_value: f64,
    /// p below [`SRM_THRESHOLD`]: the assignment is not what the weights
    /// ask for (a bug in targeting, a variant that fails to log, ...).
    pub mismatch: bool,
}

/// The chi-square goodness-of-fit of `observed` counts against `shares`
/// (any positive scale; one per count). None with fewer than two groups
/// or no observations.
pub fn sample_ratio(observed: &[u64], shares: &[f64]) -> Option<SampleRatio> {
    if observed.len() < 2 || observed.len() != shares.len() {
        return None;
    }
    let total: f64 = observed.iter().map(|o| *o as f64).sum();
    let share_total: f64 = shares.iter().sum();
    if total <= 0.0 || share_total <= 0.0 {
        return None;
    }
    let chi_square: f64 = observed
        .iter()
        .zip(shares)
        .filter(|(_, s)| **s > 0.0)
        .map(|(o, s)| {
            let expected = total * s / share_total;
            (*o as f64 - expected).powi(2) / expected
        })
        .sum();
    let groups = shares.iter().filter(|s| **s > 0.0).count() as u64;
    let degrees_of_freedom = groups.saturating_sub(1).max(1);
    let p_value = ChiSquared::new(degrees_of_freedom as f64)
        .map(|d| 1.0 - d.cdf(chi_square))
        .unwrap_or(1.0);
    Some(SampleRatio {
        chi_square,
        degrees_of_freedom,
        p_value,
        mismatch: p_value < SRM_THRESHOLD,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, within: f64) -> bool {
        (a - b).abs() <= within
    }

    /// statsmodels' `proportions_ztest([250, 200], [2000, 2000])` (pooled
    /// two-proportion z-test, as documented in statsmodels 0.14):
    /// z = 2.501955, p = 0.012351. The difference 0.025 has a 95 %
    /// interval of ±1.959964 × sqrt(0.1·0.9/2000 + 0.125·0.875/2000) =
    /// ±0.019569.
    #[test]
    fn the_z_test_matches_statsmodels_worked_example() {
        let c = compare((200, 2000), (250, 2000)).unwrap();
        assert!(close(c.z, 2.501_955, 1e-5), "{c:?}");
        assert!(close(c.p_value, 0.012_351, 1e-5), "{c:?}");
        assert!(close(c.difference, 0.025, 1e-12));
        assert!(close(c.ci_high - c.difference, 0.019_569, 1e-5), "{c:?}");
        assert!(close(c.lift.unwrap(), 0.25, 1e-12));
    }

    /// Wikipedia, "Pearson's chi-squared test", fairness of dice: a die
    /// thrown 60 times lands 5, 8, 9, 8, 10 and 20 times on 1–6:
    /// χ² = 13.4 with 5 degrees of freedom, p ≈ 0.0199 (scipy's
    /// `chisquare` gives 0.019905).
    #[test]
    fn the_chi_square_matches_the_fair_die_example() {
        let srm = sample_ratio(&[5, 8, 9, 8, 10, 20], &[1.0; 6]).unwrap();
        assert!(close(srm.chi_square, 13.4, 1e-9), "{srm:?}");
        assert_eq!(srm.degrees_of_freedom, 5);
        assert!(close(srm.p_value, 0.019_905, 1e-5), "{srm:?}");
        assert!(!srm.mismatch);
    }

    #[test]
    fn a_deliberately_skewed_split_is_flagged_and_a_near_even_one_is_not() {
        // 5,050 / 4,950 on 50/50: χ² = 1.0, p = 0.3173 (scipy).
        let fair = sample_ratio(&[5050, 4950], &[0.5, 0.5]).unwrap();
        assert!(close(fair.p_value, 0.317_311, 1e-5), "{fair:?}");
        assert!(!fair.mismatch);
        let skewed = sample_ratio(&[5300, 4700], &[0.5, 0.5]).unwrap();
        assert!(skewed.mismatch, "{skewed:?}");
    }

    #[test]
    fn rates_without_trials_or_variation_compare_safely() {
        assert_eq!(compare((0, 0), (1, 10)), None);
        let none = compare((0, 100), (0, 100)).unwrap();
        assert_eq!((none.z, none.p_value, none.lift), (0.0, 1.0, None));
    }
}
