//! Experiments as sends use them: whether the experiment a create names
//! takes it (running, and its category), the recipient's variant (drawn
//! by the pure assignment, recorded once and kept), and what that variant
//! sends.

use std::sync::Arc;

use super::metadata::CommandMetadata;
use super::runner::{CommandError, Commands};
use crate::domain::experiment::{
    assign, assignment_stream, Arm, Assignment, AssignmentCommand, AssignmentError, Bucket,
    Experiment, ExperimentError, ExperimentId, ExperimentUse, Status,
};
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
}
