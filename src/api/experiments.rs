//! `/v1/experiments/{id}`: an experiment's design (an admin's), its
//! lifecycle (start, pause, conclude), its weights and metrics, and its
//! results with the statistics; how a create is enrolled.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;
use tracing::instrument;

use super::context::RequestContext;
use super::inbox::parse_as_of;
use super::json::StrictJson;
use super::notifications::metadata;
use super::params::{
    AsOfRule, CategoryRule, ExperimentIdRule, Int, Text, VariantNameRule, WeightRule,
};
use super::problem::{ApiError, FieldProblem};
use super::views::rfc3339;
use super::ApiTags;
use crate::domain::experiment::{
    Arm, Design, Experiment, ExperimentCommand, ExperimentError, ExperimentId, Metric, Outcome,
    Variant, VariantName, SHARE_SCALE,
};
use crate::domain::template::TemplateKey;
use crate::domain::{Body, Category, Title};
use crate::projections::outcome_results::{results, Results};
use crate::projections::outcomes::{range_of, Row, RANGE};
use crate::storage::Position;
use crate::AppState;

/// The most outcome rows one results read folds.
const RESULTS_ROWS_MAX: usize = 2_000_000;

/// One variant of a design.
#[derive(Object, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
#[oai(rename = "ExperimentVariant")]
pub struct VariantBody {
    /// `control`, `short-subject`: lowercase letters, digits, `_`, `-`.
    #[oai(validator(pattern = r"^[a-z0-9_-]{1,32}$"))]
    pub name: String,
    /// Its share of those not held out, relative to the others' (1–1,000,000).
    #[oai(validator(minimum(value = "1"), maximum(value = "1000000")))]
    pub weight: u32,
    /// A template it sends instead of the send's text.
    #[serde(default)]
    #[oai(nullable, validator(pattern = r"^[a-z0-9._:-]{1,64}$"))]
    pub template: Option<String>,
    /// That template's version (absent: its published one at the send).
    #[serde(default)]
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "1000")))]
    pub template_version: Option<u64>,
    /// A title it sends instead (with `body`).
    #[serde(default)]
    #[oai(nullable)]
    pub title: Option<String>,
    #[serde(default)]
    #[oai(nullable)]
    pub body: Option<String>,
}

/// An experiment's design.
#[derive(Object, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[oai(rename = "ExperimentDesign")]
pub struct DesignBody {
    /// Only sends in this category take part.
    pub category: Text<CategoryRule>,
    /// 2–10; the first is the control. Each sends the send's own text,
    /// a template, or a title and body.
    #[oai(validator(min_items = 2, max_items = 10))]
    pub variants: Vec<VariantBody>,
    /// The share (0–0.5) that receives nothing.
    #[serde(default)]
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "0.5")))]
    pub holdout: Option<f64>,
}

#[derive(Object, Debug)]
#[oai(rename = "ExperimentVariantView")]
pub struct VariantView {
    pub name: String,
    pub weight: u32,
    /// `as_sent`, `template` or `content`.
    pub arm: String,
    #[oai(skip_serializing_if_is_none)]
    pub template: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub template_version: Option<u64>,
    #[oai(skip_serializing_if_is_none)]
    pub title: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub body: Option<String>,
}

#[derive(Object, Debug)]
#[oai(rename = "ExperimentMetric")]
pub struct MetricView {
    pub name: String,
    /// `delivered`, `seen`, `read` or `clicked`.
    pub outcome: String,
    #[oai(skip_serializing_if_is_none)]
    pub within_seconds: Option<u64>,
}

#[derive(Object, Debug)]
#[oai(rename = "Experiment")]
pub struct ExperimentView {
    pub id: String,
    pub category: String,
    /// `draft`, `running`, `paused` or `concluded`.
    pub status: String,
    pub holdout: f64,
    pub variants: Vec<VariantView>,
    /// Which set of weights is in force (1: the design's).
    pub weights_version: u64,
    /// Metrics beyond the built-in `delivered`, `seen`, `read`, `clicked`.
    pub metrics: Vec<MetricView>,
    #[oai(nullable)]
    pub winner: Option<String>,
    #[oai(nullable)]
    pub started_at: Option<String>,
    #[oai(nullable)]
    pub concluded_at: Option<String>,
    pub cursor: String,
    #[oai(skip_serializing_if_is_none)]
    pub changed: Option<bool>,
}

/// Which variant won (absent: none; sends then go as sent).
#[derive(Object, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct ConcludeBody {
    #[serde(default)]
    #[oai(nullable, validator(pattern = r"^[a-z0-9_-]{1,32}$"))]
    pub winner: Option<String>,
}

/// New weights, one per variant in order.
#[derive(Object, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct WeightsBody {
    #[oai(validator(min_items = 2, max_items = 10))]
    pub weights: Vec<Int<WeightRule>>,
}

/// A metric.
#[derive(Object, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct MetricBody {
    /// `delivered`, `seen`, `read` or `clicked`.
    #[oai(validator(pattern = r"^(delivered|seen|read|clicked)$"))]
    pub outcome: String,
    /// Counted only within this many seconds of the exposure (absent: ever).
    #[serde(default)]
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "31536000")))]
    pub within_seconds: Option<u64>,
}

#[derive(Object, Debug)]
#[oai(rename = "ExperimentComparison")]
pub struct ComparisonView {
    /// The variant's rate minus the control's.
    pub difference: f64,
    /// The difference's 95 % confidence interval.
    pub ci_low: f64,
    pub ci_high: f64,
    /// The difference over the control's rate (null when it is 0), and
    /// its interval.
    #[oai(nullable)]
    pub lift: Option<f64>,
    #[oai(nullable)]
    pub lift_ci_low: Option<f64>,
    #[oai(nullable)]
    pub lift_ci_high: Option<f64>,
    /// The two-proportion z statistic and its two-sided p-value.
    pub z: f64,
    pub p_value: f64,
}

#[derive(Object, Debug)]
#[oai(rename = "ExperimentMetricResult")]
pub struct MetricResultView {
    pub name: String,
    pub count: u64,
    /// Over the exposed (null: none exposed).
    #[oai(nullable)]
    pub rate: Option<f64>,
    /// Against the control (absent for the control).
    #[oai(skip_serializing_if_is_none)]
    pub against_control: Option<ComparisonView>,
}

#[derive(Object, Debug)]
#[oai(rename = "ExperimentVariantResult")]
pub struct VariantResultView {
    pub name: String,
    pub control: bool,
    pub assigned: u64,
    pub exposed: u64,
    pub metrics: Vec<MetricResultView>,
}

#[derive(Object, Debug)]
#[oai(rename = "SampleRatioCheck")]
pub struct SampleRatioView {
    pub chi_square: f64,
    pub degrees_of_freedom: u64,
    pub p_value: f64,
    /// p below 0.001: the assigned counts are not what the weights ask.
    pub mismatch: bool,
}

#[derive(Object, Debug)]
#[oai(rename = "ExperimentResults")]
pub struct ResultsView {
    pub id: String,
    pub status: String,
    /// The time the results are as of (null: now).
    #[oai(nullable)]
    pub as_of: Option<String>,
    pub holdout_assigned: u64,
    pub variants: Vec<VariantResultView>,
    /// Null until two groups have assignments.
    #[oai(nullable)]
    pub sample_ratio: Option<SampleRatioView>,
    /// The outcome rows read reached the limit: the results are partial.
    pub truncated: bool,
}

#[derive(ApiResponse)]
pub enum ExperimentResponse {
    #[oai(status = 200)]
    Ok(Json<ExperimentView>),
}

#[derive(ApiResponse)]
pub enum ResultsResponse {
    #[oai(status = 200)]
    Ok(Json<ResultsView>),
}

impl From<ExperimentError> for ApiError {
    fn from(err: ExperimentError) -> Self {
        let detail = err.to_string();
        match err {
            ExperimentError::NotDefined => Self::not_found(detail),
            ExperimentError::NoSuchVariant(_)
            | ExperimentError::Weights { .. }
            | ExperimentError::BuiltInMetric(_) => Self::invalid("body", detail),
            ExperimentError::DesignFixed
            | ExperimentError::Transition(..)
            | ExperimentError::TooManyMetrics => Self::conflict(
                "experiment-state",
                "Not possible in the experiment's state",
                detail,
            ),
        }
    }
}

impl From<crate::domain::experiment::AssignmentError> for ApiError {
    fn from(err: crate::domain::experiment::AssignmentError) -> Self {
        match err {}
    }
}

fn parse_id(raw: &str) -> Result<ExperimentId, ApiError> {
    ExperimentId::parse(raw).map_err(|e| ApiError::invalid("path.id", e.0))
}

impl DesignBody {
    fn parse(&self) -> Result<Design, ApiError> {
        let mut errors = Vec::new();
        let mut problem =
            |field: String, message: String| errors.push(FieldProblem { field, message });
        let category = Category::parse(self.category.as_str())
            .map_err(|e| problem("category".into(), e.0))
            .ok();
        let mut variants = Vec::new();
        for (i, v) in self.variants.iter().enumerate() {
            let at = |f: &str| format!("variants[{i}].{f}");
            let name = VariantName::parse(&v.name)
                .map_err(|e| problem(at("name"), e.0))
                .ok();
            let arm = match (&v.template, &v.title, &v.body) {
                (None, None, None) => {
                    if v.template_version.is_some() {
                        problem(
                            at("template_version"),
                            "is for a `template`; name one".into(),
                        );
                    }
                    Some(Arm::AsSent)
                }
                (Some(key), None, None) => match TemplateKey::parse(key) {
                    Ok(key) => Some(Arm::Template {
                        key,
                        version: v.template_version,
                    }),
                    Err(e) => {
                        problem(at("template"), e.0);
                        None
                    }
                },
                (None, Some(title), Some(body)) => match (Title::parse(title), Body::parse(body)) {
                    (Ok(title), Ok(body)) => Some(Arm::Content { title, body }),
                    (t, b) => {
                        if let Err(e) = t {
                            problem(at("title"), e.0);
                        }
                        if let Err(e) = b {
                            problem(at("body"), e.0);
                        }
                        None
                    }
                },
                _ => {
                    problem(
                        at("template"),
                        "a variant sends a `template`, or a `title` and a `body`, or (neither) the send's own text".into(),
                    );
                    None
                }
            };
            if let (Some(name), Some(arm)) = (name, arm) {
                variants.push(Variant {
                    name,
                    weight: v.weight,
                    arm,
                });
            }
        }
        let holdout = match self.holdout {
            None => Some(0),
            Some(h) if h.is_finite() && (0.0..=0.5).contains(&h) => {
                Some((h * f64::from(SHARE_SCALE)).round() as u32)
            }
            Some(h) => {
                problem("holdout".into(), format!("is {h}; a holdout is 0 to 0.5"));
                None
            }
        };
        match (category, holdout) {
            (Some(category), Some(holdout)) if errors.is_empty() => {
                Design::new(category, variants, holdout).map_err(|problems| {
                    ApiError::invalid_fields(
                        problems
                            .into_iter()
                            .map(|p| FieldProblem {
                                field: p.field,
                                message: p.message,
                            })
                            .collect(),
                    )
                })
            }
            _ => Err(ApiError::invalid_fields(errors)),
        }
    }
}

fn view(
    id: &ExperimentId,
    e: &Experiment,
    position: Position,
    changed: Option<bool>,
) -> ExperimentView {
    let design = e.design.as_ref();
    ExperimentView {
        id: id.as_str().to_owned(),
        category: design
            .map(|d| d.category.as_str().to_owned())
            .unwrap_or_default(),
        status: e.status().as_str().to_owned(),
        holdout: design.map_or(0.0, |d| f64::from(d.holdout) / f64::from(SHARE_SCALE)),
        variants: design
            .map(|d| {
                d.variants
                    .iter()
                    .zip(&e.weights)
                    .map(|(v, weight)| {
                        let mut view = VariantView {
                            name: v.name.as_str().to_owned(),
                            weight: *weight,
                            arm: String::new(),
                            template: None,
                            template_version: None,
                            title: None,
                            body: None,
                        };
                        match &v.arm {
                            Arm::AsSent => view.arm = "as_sent".into(),
                            Arm::Template { key, version } => {
                                view.arm = "template".into();
                                view.template = Some(key.as_str().to_owned());
                                view.template_version = *version;
                            }
                            Arm::Content { title, body } => {
                                view.arm = "content".into();
                                view.title = Some(title.as_str().to_owned());
                                view.body = Some(body.as_str().to_owned());
                            }
                        }
                        view
                    })
                    .collect()
            })
            .unwrap_or_default(),
        weights_version: e.weights_version,
        metrics: e
            .metrics
            .iter()
            .map(|m| MetricView {
                name: m.name.as_str().to_owned(),
                outcome: m.outcome.as_str().to_owned(),
                within_seconds: m.within_seconds,
            })
            .collect(),
        winner: e.winner.as_ref().map(|w| w.as_str().to_owned()),
        started_at: e.started_at.map(rfc3339),
        concluded_at: e.concluded_at.map(rfc3339),
        cursor: position.to_cursor(),
        changed,
    }
}

fn results_view(
    id: &ExperimentId,
    e: &Experiment,
    r: Results,
    as_of: Option<String>,
    truncated: bool,
) -> ResultsView {
    ResultsView {
        id: id.as_str().to_owned(),
        status: e.status().as_str().to_owned(),
        as_of,
        holdout_assigned: r.holdout_assigned,
        variants: r
            .variants
            .into_iter()
            .enumerate()
            .map(|(i, v)| VariantResultView {
                name: v.name,
                control: i == 0,
                assigned: v.assigned,
                exposed: v.exposed,
                metrics: v
                    .metrics
                    .into_iter()
                    .map(|m| MetricResultView {
                        name: m.name,
                        count: m.count,
                        rate: m.rate,
                        against_control: m.against_control.map(|c| ComparisonView {
                            difference: c.difference,
                            ci_low: c.ci_low,
                            ci_high: c.ci_high,
                            lift: c.lift,
                            lift_ci_low: c.lift_ci_low,
                            lift_ci_high: c.lift_ci_high,
                            z: c.z,
                            p_value: c.p_value,
                        }),
                    })
                    .collect(),
            })
            .collect(),
        sample_ratio: r.sample_ratio.map(|s| SampleRatioView {
            chi_square: s.chi_square,
            degrees_of_freedom: s.degrees_of_freedom,
            p_value: s.p_value,
            mismatch: s.mismatch,
        }),
        truncated,
    }
}

pub struct ExperimentsApi {
    pub state: Arc<AppState>,
}

impl ExperimentsApi {
    async fn run(
        &self,
        ctx: &RequestContext,
        id: &ExperimentId,
        command: impl Fn(crate::domain::Timestamp) -> ExperimentCommand,
    ) -> Result<ExperimentResponse, ApiError> {
        let decided = self
            .state
            .experiments
            .experiments
            .execute(id.as_str(), command, &metadata(ctx), false)
            .await?;
        Ok(ExperimentResponse::Ok(Json(view(
            id,
            &decided.state,
            decided.position,
            Some(decided.changed),
        ))))
    }
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Templates")]
impl ExperimentsApi {
    /// Define an experiment
    ///
    /// Its design while it is a draft (`ExperimentDefined`); fixed once
    /// started. The first variant is the control.
    #[oai(
        path = "/experiments/:id",
        method = "put",
        operation_id = "defineExperiment"
    )]
    #[instrument(skip_all)]
    async fn define(
        &self,
        ctx: Data<&RequestContext>,
        id: Path<Text<ExperimentIdRule>>,
        body: StrictJson<DesignBody>,
    ) -> Result<ExperimentResponse, ApiError> {
        let id = parse_id(id.0.as_str())?;
        let design = body.0.parse()?;
        self.run(&ctx, &id, |at| ExperimentCommand::Define {
            design: design.clone(),
            at,
        })
        .await
    }

    /// An experiment: its design, status, weights and metrics
    #[oai(
        path = "/experiments/:id",
        method = "get",
        operation_id = "getExperiment"
    )]
    async fn get(&self, id: Path<Text<ExperimentIdRule>>) -> Result<ExperimentResponse, ApiError> {
        let id = parse_id(id.0.as_str())?;
        let current = self
            .state
            .experiments
            .experiments
            .current(id.as_str(), None)
            .await?;
        if current.state.design.is_none() {
            return Err(ApiError::not_found(format!("no experiment `{id}` exists")));
        }
        Ok(ExperimentResponse::Ok(Json(view(
            &id,
            &current.state,
            current.position,
            None,
        ))))
    }

    /// Start (or resume) an experiment
    #[oai(
        path = "/experiments/:id/start",
        method = "post",
        operation_id = "startExperiment"
    )]
    async fn start(
        &self,
        ctx: Data<&RequestContext>,
        id: Path<Text<ExperimentIdRule>>,
    ) -> Result<ExperimentResponse, ApiError> {
        let id = parse_id(id.0.as_str())?;
        self.run(&ctx, &id, |at| ExperimentCommand::Start { at })
            .await
    }

    /// Pause an experiment
    ///
    /// Sends go as sent, outside it, until it starts again.
    #[oai(
        path = "/experiments/:id/pause",
        method = "post",
        operation_id = "pauseExperiment"
    )]
    async fn pause(
        &self,
        ctx: Data<&RequestContext>,
        id: Path<Text<ExperimentIdRule>>,
    ) -> Result<ExperimentResponse, ApiError> {
        let id = parse_id(id.0.as_str())?;
        self.run(&ctx, &id, |at| ExperimentCommand::Pause { at })
            .await
    }

    /// Conclude an experiment
    ///
    /// `winner`: every send from now on gets that variant (absent: sends
    /// go as sent). Recorded as `ExperimentConcluded`.
    #[oai(
        path = "/experiments/:id/conclude",
        method = "post",
        operation_id = "concludeExperiment"
    )]
    async fn conclude(
        &self,
        ctx: Data<&RequestContext>,
        id: Path<Text<ExperimentIdRule>>,
        body: StrictJson<ConcludeBody>,
    ) -> Result<ExperimentResponse, ApiError> {
        let id = parse_id(id.0.as_str())?;
        let winner = match &body.0.winner {
            None => None,
            Some(w) => Some(VariantName::parse(w).map_err(|e| ApiError::invalid("winner", e.0))?),
        };
        self.run(&ctx, &id, |at| ExperimentCommand::Conclude {
            winner: winner.clone(),
            at,
        })
        .await
    }

    /// Change an experiment's weights
    ///
    /// One per variant, in order. Users assigned already keep their
    /// variant; the new weights apply to those not yet assigned.
    #[oai(
        path = "/experiments/:id/weights",
        method = "put",
        operation_id = "setExperimentWeights"
    )]
    async fn weights(
        &self,
        ctx: Data<&RequestContext>,
        id: Path<Text<ExperimentIdRule>>,
        body: StrictJson<WeightsBody>,
    ) -> Result<ExperimentResponse, ApiError> {
        let id = parse_id(id.0.as_str())?;
        let weights: Vec<u32> = body
            .0
            .weights
            .iter()
            .map(|w| u32::try_from(w.0).unwrap_or(0))
            .collect();
        self.run(&ctx, &id, |at| ExperimentCommand::SetWeights {
            weights: weights.clone(),
            at,
        })
        .await
    }

    /// Define a metric
    ///
    /// At any time, even after the experiment: the results answer it over
    /// its whole history (the outcome rows keep when each notification
    /// was delivered, seen, read and clicked).
    #[oai(
        path = "/experiments/:id/metrics/:name",
        method = "put",
        operation_id = "defineExperimentMetric"
    )]
    async fn metric(
        &self,
        ctx: Data<&RequestContext>,
        id: Path<Text<ExperimentIdRule>>,
        name: Path<Text<VariantNameRule>>,
        body: StrictJson<MetricBody>,
    ) -> Result<ExperimentResponse, ApiError> {
        let id = parse_id(id.0.as_str())?;
        let mut errors = Vec::new();
        let name = VariantName::parse(name.0.as_str())
            .map_err(|e| {
                errors.push(FieldProblem {
                    field: "path.name".into(),
                    message: e.0,
                })
            })
            .ok();
        let outcome = Outcome::parse(&body.0.outcome)
            .map_err(|e| {
                errors.push(FieldProblem {
                    field: "outcome".into(),
                    message: e.0,
                })
            })
            .ok();
        if body.0.within_seconds == Some(0) {
            errors.push(FieldProblem {
                field: "within_seconds".into(),
                message: "is 0; give 1 or more seconds (or leave it out)".into(),
            });
        }
        let (Some(name), Some(outcome)) = (name, outcome) else {
            return Err(ApiError::invalid_fields(errors));
        };
        super::preferences::done(errors, ())?;
        let metric = Metric {
            name,
            outcome,
            within_seconds: body.0.within_seconds,
        };
        self.run(&ctx, &id, |at| ExperimentCommand::DefineMetric {
            metric: metric.clone(),
            at,
        })
        .await
    }

    /// An experiment's results
    ///
    /// Per variant: assigned, exposed, and each metric's count and rate
    /// over the exposed; against the control, the difference with its
    /// 95 % confidence interval, the lift and the two-proportion z-test
    /// p-value; the sample-ratio check (chi-square of the assigned counts
    /// against the weights they were drawn under, flagged below p =
    /// 0.001). `as_of` (an RFC 3339 time) answers as it was then.
    #[oai(
        path = "/experiments/:id/results",
        method = "get",
        operation_id = "getExperimentResults"
    )]
    async fn results(
        &self,
        id: Path<Text<ExperimentIdRule>>,
        /// An RFC 3339 time or a log cursor.
        as_of: Query<Option<Text<AsOfRule>>>,
    ) -> Result<ResultsResponse, ApiError> {
        let id = parse_id(id.0.as_str())?;
        let cut = as_of
            .0
            .as_ref()
            .map(|raw| parse_as_of(raw.as_str()))
            .transpose()?;
        let current = self
            .state
            .experiments
            .experiments
            .current(id.as_str(), cut)
            .await?;
        if current.state.design.is_none() {
            return Err(ApiError::not_found(format!(
                "no experiment `{id}` exists (then)"
            )));
        }
        let start = range_of(id.as_str());
        let mut rows: Vec<Row> = Vec::new();
        let mut after = None;
        let truncated = loop {
            let page = self
                .state
                .outcomes
                .range(start, start + RANGE, after.clone(), 5_000)
                .await?;
            let Some(last) = page.last() else { break false };
            after = Some((last.sort, last.key.clone()));
            let full = page.len() < 5_000;
            rows.extend(page.into_iter().map(|k| k.row));
            if full {
                break false;
            }
            if rows.len() >= RESULTS_ROWS_MAX {
                break true;
            }
        };
        let mut metrics = Metric::built_in();
        metrics.extend(current.state.metrics.iter().cloned());
        let time = cut
            .map(|(_, t)| t)
            .filter(|t| *t != chrono::DateTime::<chrono::Utc>::MAX_UTC);
        let computed = results(id.as_str(), &current.state, &rows, &metrics, time);
        Ok(ResultsResponse::Ok(Json(results_view(
            &id,
            &current.state,
            computed,
            time.map(rfc3339),
            truncated,
        ))))
    }
}
