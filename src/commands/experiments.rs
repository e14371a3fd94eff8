//! Experiments as sends use them: whether the experiment a create names
//! takes it (running, and its category), the recipient's variant (drawn
//! by the pure assignment, recorded once and kept), and what that variant
//! sends.

use std::sync::Arc;

use super::metadata::CommandMetadata;
use super::runner::Target;
use super::runner::{CommandError, Commands};
use super::templates::{TemplateLibrary, TemplateProblem};
use crate::domain::experiment::{
    assign, assignment_stream, Arm, Assignment, AssignmentCommand, AssignmentError, Bucket,
    Experiment, ExperimentError, ExperimentId, ExperimentUse, Status, VariantName,
};
use crate::domain::send::{ArmText, SendExperiment};
use crate::domain::Data;
use crate::domain::{Category, UserId};

/// Why a create cannot be sent under the experiment it names.
#[derive(Debug, thiserror::Error)]
pub enum EnrollProblem {
    #[error("no experiment `{0}` exists; define it with PUT /v1/experiments/{0}")]
    Unknown(ExperimentId),
    #[error("experiment `{experiment}` targets category `{}`, not `{}`", targets.as_str(), category.as_str())]
    Category {
        experiment: ExperimentId,
        targets: Category,
        category: Category,
    },
    #[error("experiment `{0}` is a draft; start it first")]
    Draft(ExperimentId),
    #[error(transparent)]
    Read(CommandError<ExperimentError>),
    #[error(transparent)]
    Assign(CommandError<AssignmentError>),
}

/// What the experiment makes of one create.
#[derive(Debug, Clone, PartialEq)]
pub struct Enrollment {
    /// What the notification records (None: not in the experiment, as
    /// when it is paused or concluded).
    pub recorded: Option<ExperimentUse>,
    /// What it sends instead of its own text (None: as sent, or held out).
    pub arm: Option<Arm>,
}

/// What a page of a send to many makes of its recipients.
#[derive(Debug, Clone, PartialEq)]
pub struct PageEnrollment {
    /// Per recipient, in order: what the notification records (None: not
    /// in the experiment) and whose text it gets (None: its own).
    pub recipients: Vec<(Option<ExperimentUse>, Option<VariantName>)>,
}

pub struct ExperimentLab {
    pub experiments: Arc<Commands<Experiment>>,
    pub assignments: Arc<Commands<Assignment>>,
}

impl ExperimentLab {
    /// Where `user` stands in `experiment` for a create in `category`.
    pub async fn enroll(
        &self,
        experiment: &ExperimentId,
        user: &UserId,
        category: &Category,
        meta: &CommandMetadata,
    ) -> Result<Enrollment, EnrollProblem> {
        let current = self
            .experiments
            .current(experiment.as_str(), None)
            .await
            .map_err(EnrollProblem::Read)?;
        let state = current.state;
        let Some(design) = &state.design else {
            return Err(EnrollProblem::Unknown(experiment.clone()));
        };
        if &design.category != category {
            return Err(EnrollProblem::Category {
                experiment: experiment.clone(),
                targets: design.category.clone(),
                category: category.clone(),
            });
        }
        match state.status() {
            Status::Draft => return Err(EnrollProblem::Draft(experiment.clone())),
            // Paused: sends go as sent, outside the experiment.
            Status::Paused => {
                return Ok(Enrollment {
                    recorded: None,
                    arm: None,
                })
            }
            // Concluded: everyone gets the winner (or their own text).
            Status::Concluded => {
                return Ok(Enrollment {
                    recorded: None,
                    arm: state
                        .winner
                        .as_ref()
                        .and_then(|w| design.variant(w))
                        .map(|v| v.arm.clone()),
                })
            }
            Status::Running => {}
        }
        let drawn = match assign(experiment, user, design.holdout, &state.weights) {
            Bucket::Holdout => None,
            Bucket::Variant(i) => design.variants.get(i).map(|v| v.name.clone()),
        };
        let weights_version = state.weights_version;
        let decided = self
            .assignments
            .execute(
                &assignment_stream(experiment, user),
                |at| AssignmentCommand::Assign {
                    experiment: experiment.clone(),
                    user: user.clone(),
                    variant: drawn.clone(),
                    weights_version,
                    at,
                },
                meta,
                false,
            )
            .await
            .map_err(EnrollProblem::Assign)?;
        // The first assignment stands, whatever the weights are now.
        let variant = decided.state.assigned.unwrap_or(drawn);
        let arm = variant
            .as_ref()
            .and_then(|v| design.variant(v))
            .map(|v| v.arm.clone());
        Ok(Enrollment {
            recorded: Some(ExperimentUse {
                experiment: experiment.clone(),
                variant,
            }),
            arm,
        })
    }

    /// A send to many under `experiment`: each variant's text resolved now
    /// (a template rendered with `variables`). None when the experiment
    /// takes no part (paused); a concluded one's winner applies to all.
    pub async fn prepare_send(
        &self,
        experiment: &ExperimentId,
        category: &Category,
        variables: &Data,
        templates: &TemplateLibrary,
    ) -> Result<Option<SendExperiment>, SendProblem> {
        let current = self
            .experiments
            .current(experiment.as_str(), None)
            .await
            .map_err(|e| SendProblem::Enroll(EnrollProblem::Read(e)))?;
        let state = current.state;
        let Some(design) = &state.design else {
            return Err(SendProblem::Enroll(EnrollProblem::Unknown(
                experiment.clone(),
            )));
        };
        if &design.category != category {
            return Err(SendProblem::Enroll(EnrollProblem::Category {
                experiment: experiment.clone(),
                targets: design.category.clone(),
                category: category.clone(),
            }));
        }
        match state.status() {
            Status::Draft => {
                return Err(SendProblem::Enroll(EnrollProblem::Draft(
                    experiment.clone(),
                )))
            }
            Status::Paused => return Ok(None),
            Status::Running | Status::Concluded => {}
        }
        let mut texts = Vec::with_capacity(design.variants.len());
        for variant in &design.variants {
            let text = match &variant.arm {
                Arm::AsSent => ArmText::AsSent,
                Arm::Template { key, version } => ArmText::Template {
                    template: Box::new(
                        templates
                            .resolve(key, *version, variables)
                            .await
                            .map_err(SendProblem::Template)?,
                    ),
                },
                Arm::Content { title, body } => ArmText::Content {
                    title: title.clone(),
                    body: body.clone(),
                },
            };
            texts.push((variant.name.clone(), text));
        }
        Ok(Some(SendExperiment {
            id: experiment.clone(),
            texts,
        }))
    }

    /// Where each of `users` stands in `experiment` for a page of a send:
    /// drawn and recorded together (one read, one append), those assigned
    /// before keeping their variant. Paused: none is in it; concluded:
    /// all get the winner's text, outside it.
    pub async fn enroll_page(
        &self,
        experiment: &ExperimentId,
        users: &[UserId],
        meta: &CommandMetadata,
    ) -> Result<PageEnrollment, String> {
        let current = self
            .experiments
            .current(experiment.as_str(), None)
            .await
            .map_err(|e| e.to_string())?;
        let state = current.state;
        let outside = |text: Option<VariantName>| PageEnrollment {
            recipients: users.iter().map(|_| (None, text.clone())).collect(),
        };
        let Some(design) = &state.design else {
            return Ok(outside(None));
        };
        match state.status() {
            Status::Draft | Status::Paused => return Ok(outside(None)),
            Status::Concluded => return Ok(outside(state.winner.clone())),
            Status::Running => {}
        }
        let drawn: Vec<Option<VariantName>> = users
            .iter()
            .map(
                |u| match assign(experiment, u, design.holdout, &state.weights) {
                    Bucket::Holdout => None,
                    Bucket::Variant(i) => design.variants.get(i).map(|v| v.name.clone()),
                },
            )
            .collect();
        let targets: Vec<Target> = users
            .iter()
            .map(|u| Target {
                aggregate_id: assignment_stream(experiment, u),
                command_id: None,
            })
            .collect();
        let weights_version = state.weights_version;
        let outcome = self
            .assignments
            .create_many(
                &targets,
                |i, at| AssignmentCommand::Assign {
                    experiment: experiment.clone(),
                    user: users[i].clone(),
                    variant: drawn[i].clone(),
                    weights_version,
                    at,
                },
                meta,
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut kept: Vec<Option<Option<VariantName>>> = vec![None; users.len()];
        for (i, assignment) in outcome.states {
            kept[i] = assignment.assigned;
        }
        Ok(PageEnrollment {
            recipients: kept
                .into_iter()
                .zip(drawn)
                .map(|(kept, drawn)| {
                    let variant = kept.unwrap_or(drawn);
                    (
                        Some(ExperimentUse {
                            experiment: experiment.clone(),
                            variant: variant.clone(),
                        }),
                        variant,
                    )
                })
                .collect(),
        })
    }
}

/// Why a send to many cannot go under the experiment it names.
#[derive(Debug, thiserror::Error)]
pub enum SendProblem {
    #[error(transparent)]
    Enroll(EnrollProblem),
    #[error(transparent)]
    Template(TemplateProblem),
}
