//! An experiment (an A/B test): one stream per experiment id holding its
//! design (the category it targets, its variants with weights, the
//! holdout share), its state (draft → running ⇄ paused → concluded, the
//! winner recorded) and each change of weights. The first variant is the
//! control.
//!
//! Assignment is a pure function of (experiment id, user, holdout,
//! weights): two independent hashes of the id and the user, one against
//! the holdout share, one against the cumulative weights. The first
//! assignment is recorded (`VariantAssigned`, in a stream per experiment
//! and user), and a user keeps it for the experiment's life: a change of
//! weights applies to users not yet assigned. The notification sent under
//! a variant records its exposure (`NotificationExposed`) apart.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::template::TemplateKey;
use super::values::{Body, Category, InvalidValue, Title, UserId};
use super::Timestamp;

pub const EXPERIMENT_EVENT_VERSION: &str = "1.0";
pub const EXPERIMENT_TYPE: &str = "Experiment";
pub const ASSIGNMENT_TYPE: &str = "ExperimentAssignment";

/// Variants per experiment.
pub const MIN_VARIANTS: usize = 2;
pub const MAX_VARIANTS: usize = 10;
/// The holdout share's unit: parts per 10,000 (basis points).
pub const SHARE_SCALE: u32 = 10_000;
/// The largest holdout: half the audience.
pub const MAX_HOLDOUT: u32 = SHARE_SCALE / 2;
/// The largest weight of one variant.
pub const MAX_WEIGHT: u32 = 1_000_000;

macro_rules! word {
    ($(#[$meta:meta])* $name:ident, $max:expr, $alphabet:literal, $ok:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, InvalidValue> {
                if s.is_empty() || s.len() > $max {
                    return Err(InvalidValue(format!("must be 1 to {} characters long", $max)));
                }
                let ok: fn(char) -> bool = $ok;
                if let Some(c) = s.chars().find(|c| !ok(*c)) {
                    return Err(InvalidValue(format!(
                        concat!("contains `{}`; use ", $alphabet, " only"),
                        c
                    )));
                }
                Ok(Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(s: String) -> Result<Self, InvalidValue> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> Self {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

word!(
    /// An experiment's id (`welcome-subject`): lowercase letters, digits
    /// and `. _ - :`, 1–64 bytes.
    ExperimentId,
    64,
    "lowercase letters, digits and . _ - :",
    |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | ':')
);
word!(
    /// A variant's name (`control`, `short-subject`): lowercase letters,
    /// digits, `_` and `-`, 1–32 bytes.
    VariantName,
    32,
    "lowercase letters, digits, _ and -",
    |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')
);

/// What a variant sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Arm {
    /// The send's own title and body.
    AsSent,
    /// A template (None: its published version at the send), rendered
    /// with the send's variables.
    Template {
        key: TemplateKey,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
    /// This title and body instead of the send's.
    Content { title: Title, body: Body },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    pub name: VariantName,
    pub weight: u32,
    pub arm: Arm,
}

/// An experiment's design, valid by construction (`Design::new`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Design {
    /// Only sends in this category take part.
    pub category: Category,
    /// The first is the control.
    pub variants: Vec<Variant>,
    /// The share (parts per 10,000) that receives nothing.
    pub holdout: u32,
}

/// What is wrong with a design: the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesignProblem {
    pub field: String,
    pub message: String,
}

impl Design {
    pub fn new(
        category: Category,
        variants: Vec<Variant>,
        holdout: u32,
    ) -> Result<Self, Vec<DesignProblem>> {
        let mut problems = Vec::new();
        let mut problem =
            |field: String, message: String| problems.push(DesignProblem { field, message });
        if !(MIN_VARIANTS..=MAX_VARIANTS).contains(&variants.len()) {
            problem(
                "variants".into(),
                format!(
                    "{} given; give {MIN_VARIANTS} to {MAX_VARIANTS}",
                    variants.len()
                ),
            );
        }
        for (i, v) in variants.iter().enumerate() {
            if variants[..i].iter().any(|w| w.name == v.name) {
                problem(
                    format!("variants[{i}].name"),
                    format!("`{}` is named twice", v.name),
                );
            }
            if !(1..=MAX_WEIGHT).contains(&v.weight) {
                problem(
                    format!("variants[{i}].weight"),
                    format!("is {}; a weight is 1 to {MAX_WEIGHT}", v.weight),
                );
            }
        }
        if holdout > MAX_HOLDOUT {
            problem(
                "holdout".into(),
                format!("is {holdout} parts in {SHARE_SCALE}; at most {MAX_HOLDOUT} (half)"),
            );
        }
        if problems.is_empty() {
            Ok(Self {
                category,
                variants,
                holdout,
            })
        } else {
            Err(problems)
        }
    }

    pub fn weights(&self) -> Vec<u32> {
        self.variants.iter().map(|v| v.weight).collect()
    }

    pub fn variant(&self, name: &VariantName) -> Option<&Variant> {
        self.variants.iter().find(|v| &v.name == name)
    }
}

/// Where a user falls: out of the experiment (the holdout) or a variant
/// (its index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Holdout,
    Variant(usize),
}

/// A uniform draw in [0, 2^64) for (experiment, user, salt).
fn draw(experiment: &ExperimentId, user: &UserId, salt: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update([0x1f]);
    hasher.update(experiment.as_str().as_bytes());
    hasher.update([0x1f]);
    hasher.update(user.as_str().as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Where `user` falls in `experiment`: a pure function of the id, the
/// user, the holdout share and the weights. The holdout and the variants
/// draw independently, so changing the holdout never moves a user between
/// variants, nor changing the weights in or out of the holdout.
pub fn assign(experiment: &ExperimentId, user: &UserId, holdout: u32, weights: &[u32]) -> Bucket {
    let out = draw(experiment, user, "holdout");
    // Multiply-shift: unbiased enough for any share (error below 2^-50).
    if ((u128::from(out) * u128::from(SHARE_SCALE)) >> 64) < u128::from(holdout) {
        return Bucket::Holdout;
    }
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return Bucket::Holdout;
    }
    let point = ((u128::from(draw(experiment, user, "variant")) * u128::from(total)) >> 64) as u64;
    let mut edge = 0u64;
    for (i, w) in weights.iter().enumerate() {
        edge += u64::from(*w);
        if point < edge {
            return Bucket::Variant(i);
        }
    }
    Bucket::Variant(weights.len() - 1)
}

/// What a notification can come to, as a metric counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Delivered,
    Seen,
    Read,
    Clicked,
}

impl Outcome {
    pub const ALL: [Self; 4] = [Self::Delivered, Self::Seen, Self::Read, Self::Clicked];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Seen => "seen",
            Self::Read => "read",
            Self::Clicked => "clicked",
        }
    }

    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        Self::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| {
                InvalidValue(format!(
                    "`{s}` is not an outcome; use delivered, seen, read or clicked"
                ))
            })
    }
}

/// A metric over the exposed notifications: those that reached `outcome`
/// (within `within_seconds` of their exposure, when given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metric {
    pub name: VariantName,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within_seconds: Option<u64>,
}

impl Metric {
    /// The four every experiment has: each outcome, ever.
    pub fn built_in() -> Vec<Metric> {
        Outcome::ALL
            .into_iter()
            .map(|outcome| Metric {
                name: VariantName(outcome.as_str().to_owned()),
                outcome,
                within_seconds: None,
            })
            .collect()
    }
}

/// The most metrics one experiment defines.
pub const MAX_METRICS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Draft,
    Running,
    Paused,
    Concluded,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Concluded => "concluded",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExperimentCommand {
    /// Define (or, while a draft, redefine) the design.
    Define {
        design: Design,
        at: Timestamp,
    },
    /// Start a draft, or resume a paused experiment.
    Start {
        at: Timestamp,
    },
    Pause {
        at: Timestamp,
    },
    /// End it; `winner`: the variant everyone gets from now on (None:
    /// sends go as sent).
    Conclude {
        winner: Option<VariantName>,
        at: Timestamp,
    },
    /// New weights, one per variant in order: they apply to users not yet
    /// assigned.
    SetWeights {
        weights: Vec<u32>,
        at: Timestamp,
    },
    /// A metric, at any time: the results answer it over the whole
    /// history.
    DefineMetric {
        metric: Metric,
        at: Timestamp,
    },
}

impl ExperimentCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Define { .. } => "DefineExperiment",
            Self::Start { .. } => "StartExperiment",
            Self::Pause { .. } => "PauseExperiment",
            Self::Conclude { .. } => "ConcludeExperiment",
            Self::SetWeights { .. } => "SetExperimentWeights",
            Self::DefineMetric { .. } => "DefineExperimentMetric",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExperimentEvent {
    ExperimentDefined {
        design: Design,
        defined_at: Timestamp,
    },
    ExperimentStarted {
        started_at: Timestamp,
    },
    ExperimentPaused {
        paused_at: Timestamp,
    },
    ExperimentResumed {
        resumed_at: Timestamp,
    },
    ExperimentConcluded {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        winner: Option<VariantName>,
        concluded_at: Timestamp,
    },
    ExperimentWeightsChanged {
        weights: Vec<u32>,
        /// Which set of weights this is (the design's is 1).
        weights_version: u64,
        changed_at: Timestamp,
    },
    ExperimentMetricDefined {
        metric: Metric,
        defined_at: Timestamp,
    },
}

impl ExperimentEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::ExperimentDefined { .. } => "ExperimentDefined",
            Self::ExperimentStarted { .. } => "ExperimentStarted",
            Self::ExperimentPaused { .. } => "ExperimentPaused",
            Self::ExperimentResumed { .. } => "ExperimentResumed",
            Self::ExperimentConcluded { .. } => "ExperimentConcluded",
            Self::ExperimentWeightsChanged { .. } => "ExperimentWeightsChanged",
            Self::ExperimentMetricDefined { .. } => "ExperimentMetricDefined",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExperimentError {
    #[error("no such experiment; define it first")]
    NotDefined,
    #[error("the experiment has started: its design is fixed (change its weights, or conclude it and start another)")]
    DesignFixed,
    #[error("the experiment is {0}; it cannot be {1}")]
    Transition(&'static str, &'static str),
    #[error("the experiment has no variant `{0}`")]
    NoSuchVariant(VariantName),
    #[error("{given} weights given for {variants} variants; give one per variant, each 1 to {MAX_WEIGHT}")]
    Weights { given: usize, variants: usize },
    #[error("`{0}` is a metric every experiment has; name yours otherwise")]
    BuiltInMetric(VariantName),
    #[error("the experiment has {MAX_METRICS} metrics, the most it keeps")]
    TooManyMetrics,
}

/// An experiment as its events leave it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Experiment {
    pub design: Option<Design>,
    pub status: Option<Status>,
    pub winner: Option<VariantName>,
    /// The weights in force (the design's, or the latest change).
    pub weights: Vec<u32>,
    pub weights_version: u64,
    /// Every set of weights in force so far: version n at index n - 1.
    pub weights_history: Vec<Vec<u32>>,
    pub started_at: Option<Timestamp>,
    pub concluded_at: Option<Timestamp>,
    /// Metrics defined beyond the built-in four, by name.
    pub metrics: Vec<Metric>,
}

impl Experiment {
    pub fn status(&self) -> Status {
        self.status.unwrap_or(Status::Draft)
    }

    pub fn decide(
        &self,
        command: ExperimentCommand,
    ) -> Result<Vec<ExperimentEvent>, ExperimentError> {
        use ExperimentEvent as E;
        let status = self.status();
        if !matches!(command, ExperimentCommand::Define { .. }) && self.design.is_none() {
            return Err(ExperimentError::NotDefined);
        }
        let refuse = |to: &'static str| Err(ExperimentError::Transition(status.as_str(), to));
        match command {
            ExperimentCommand::Define { design, at } => {
                if self.design.is_some() && status != Status::Draft {
                    return Err(ExperimentError::DesignFixed);
                }
                if self.design.as_ref() == Some(&design) {
                    return Ok(vec![]);
                }
                Ok(vec![E::ExperimentDefined {
                    design,
                    defined_at: at,
                }])
            }
            ExperimentCommand::Start { at } => match status {
                Status::Draft => Ok(vec![E::ExperimentStarted { started_at: at }]),
                Status::Paused => Ok(vec![E::ExperimentResumed { resumed_at: at }]),
                Status::Running => Ok(vec![]),
                Status::Concluded => refuse("started"),
            },
            ExperimentCommand::Pause { at } => match status {
                Status::Running => Ok(vec![E::ExperimentPaused { paused_at: at }]),
                Status::Paused => Ok(vec![]),
                Status::Draft | Status::Concluded => refuse("paused"),
            },
            ExperimentCommand::Conclude { winner, at } => {
                if let (Some(w), Some(design)) = (&winner, &self.design) {
                    if design.variant(w).is_none() {
                        return Err(ExperimentError::NoSuchVariant(w.clone()));
                    }
                }
                match status {
                    Status::Concluded if self.winner == winner => Ok(vec![]),
                    Status::Concluded | Status::Draft => refuse("concluded"),
                    Status::Running | Status::Paused => Ok(vec![E::ExperimentConcluded {
                        winner,
                        concluded_at: at,
                    }]),
                }
            }
            ExperimentCommand::SetWeights { weights, at } => {
                let variants = self.design.as_ref().map_or(0, |d| d.variants.len());
                if weights.len() != variants
                    || weights.iter().any(|w| !(1..=MAX_WEIGHT).contains(w))
                {
                    return Err(ExperimentError::Weights {
                        given: weights.len(),
                        variants,
                    });
                }
                if status == Status::Concluded {
                    return refuse("reweighted");
                }
                if weights == self.weights {
                    return Ok(vec![]);
                }
                Ok(vec![E::ExperimentWeightsChanged {
                    weights,
                    weights_version: self.weights_version + 1,
                    changed_at: at,
                }])
            }
            ExperimentCommand::DefineMetric { metric, at } => {
                if Outcome::ALL
                    .iter()
                    .any(|o| o.as_str() == metric.name.as_str())
                {
                    return Err(ExperimentError::BuiltInMetric(metric.name));
                }
                if self.metrics.contains(&metric) {
                    return Ok(vec![]);
                }
                let known = self.metrics.iter().any(|m| m.name == metric.name);
                if !known && self.metrics.len() >= MAX_METRICS {
                    return Err(ExperimentError::TooManyMetrics);
                }
                Ok(vec![E::ExperimentMetricDefined {
                    metric,
                    defined_at: at,
                }])
            }
        }
    }

    pub fn apply(&mut self, event: ExperimentEvent) {
        use ExperimentEvent as E;
        match event {
            E::ExperimentDefined { design, .. } => {
                self.weights = design.weights();
                self.weights_version = 1;
                self.weights_history = vec![design.weights()];
                self.design = Some(design);
                self.status = Some(Status::Draft);
            }
            E::ExperimentStarted { started_at } => {
                self.status = Some(Status::Running);
                self.started_at = Some(started_at);
            }
            E::ExperimentPaused { .. } => self.status = Some(Status::Paused),
            E::ExperimentResumed { .. } => self.status = Some(Status::Running),
            E::ExperimentConcluded {
                winner,
                concluded_at,
            } => {
                self.status = Some(Status::Concluded);
                self.winner = winner;
                self.concluded_at = Some(concluded_at);
            }
            E::ExperimentWeightsChanged {
                weights,
                weights_version,
                ..
            } => {
                self.weights_history.push(weights.clone());
                self.weights = weights;
                self.weights_version = weights_version;
            }
            E::ExperimentMetricDefined { metric, .. } => {
                match self.metrics.iter_mut().find(|m| m.name == metric.name) {
                    Some(m) => *m = metric,
                    None => self.metrics.push(metric),
                }
            }
        }
    }
}

/// The stream holding `user`'s assignment in `experiment`.
pub fn assignment_stream(experiment: &ExperimentId, user: &UserId) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x3b6e_91d4_27a0_4f15_b0c2_7e4d_18a9_55f3);
    uuid::Uuid::new_v5(
        &NAMESPACE,
        format!("{}\u{1f}{}", experiment.as_str(), user.as_str()).as_bytes(),
    )
    .to_string()
}

#[derive(Debug, Clone, PartialEq)]
pub enum AssignmentCommand {
    /// Record where the user falls, unless they were assigned already.
    Assign {
        experiment: ExperimentId,
        user: UserId,
        /// None: the holdout.
        variant: Option<VariantName>,
        weights_version: u64,
        at: Timestamp,
    },
}

impl AssignmentCommand {
    pub fn name(&self) -> &'static str {
        "AssignVariant"
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AssignmentEvent {
    VariantAssigned {
        experiment: ExperimentId,
        user: UserId,
        /// None: held out (receives nothing).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        variant: Option<VariantName>,
        /// The weights it was drawn under.
        weights_version: u64,
        assigned_at: Timestamp,
    },
}

impl AssignmentEvent {
    pub fn event_type(&self) -> &'static str {
        "VariantAssigned"
    }
}

/// Assignments refuse nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignmentError {}

/// A user's assignment in one experiment: the first, for good.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Some(None): held out.
    pub assigned: Option<Option<VariantName>>,
    pub assigned_at: Option<Timestamp>,
}

impl Assignment {
    pub fn decide(
        &self,
        command: AssignmentCommand,
    ) -> Result<Vec<AssignmentEvent>, AssignmentError> {
        let AssignmentCommand::Assign {
            experiment,
            user,
            variant,
            weights_version,
            at,
        } = command;
        if self.assigned.is_some() {
            return Ok(vec![]);
        }
        Ok(vec![AssignmentEvent::VariantAssigned {
            experiment,
            user,
            variant,
            weights_version,
            assigned_at: at,
        }])
    }

    pub fn apply(&mut self, event: AssignmentEvent) {
        let AssignmentEvent::VariantAssigned {
            variant,
            assigned_at,
            ..
        } = event;
        self.assigned = Some(variant);
        self.assigned_at = Some(assigned_at);
    }
}

impl Experiment {
    /// The share (parts per 10,000 of the audience) each group is drawn
    /// with under weights version `version`: the holdout first, then each
    /// variant.
    pub fn shares(&self, version: u64) -> Vec<f64> {
        let Some(design) = &self.design else {
            return Vec::new();
        };
        let weights = version
            .checked_sub(1)
            .and_then(|i| self.weights_history.get(i as usize))
            .unwrap_or(&self.weights);
        let total: f64 = weights.iter().map(|w| f64::from(*w)).sum();
        let holdout = f64::from(design.holdout);
        let rest = f64::from(SHARE_SCALE) - holdout;
        std::iter::once(holdout)
            .chain(
                weights
                    .iter()
                    .map(|w| rest * f64::from(*w) / total.max(1.0)),
            )
            .collect()
    }
}

/// What a notification records of the experiment it was sent under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExperimentUse {
    pub experiment: ExperimentId,
    /// None: held out (it receives nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<VariantName>,
}

#[cfg(test)]
#[path = "experiment_tests.rs"]
mod tests;
