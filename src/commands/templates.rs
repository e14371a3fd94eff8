//! Templates as sends use them: the version a send names (or the
//! published one), its variables checked against that version's JSON
//! Schema, every locale rendered. The send records the text, so no later
//! version, publish or rollback changes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::runner::{CommandError, Commands};
use crate::domain::template::{
    RenderError, Template, TemplateError, TemplateKey, TemplateUse, TemplateVersion,
};
use crate::domain::Data;
use crate::render::VariablesCheck;

/// The most compiled schemas kept; past it the cache starts over.
const CHECKS_MAX: usize = 1024;

/// Why a send's template cannot be used as asked.
#[derive(Debug, thiserror::Error)]
pub enum TemplateProblem {
    #[error("no template `{0}` exists; add a version with POST /v1/templates/{0}/versions")]
    Unknown(TemplateKey),
    #[error("template `{key}`: {error}")]
    Version {
        key: TemplateKey,
        error: TemplateError,
    },
    /// Where in the variables (a JSON pointer) and why.
    #[error("the variables do not meet the schema of template `{key}` version {version}")]
    Variables {
        key: TemplateKey,
        version: u64,
        violations: Vec<(String, String)>,
    },
    #[error("template `{key}` version {version} does not render: {error}")]
    Render {
        key: TemplateKey,
        version: u64,
        error: RenderError,
    },
    #[error(transparent)]
    Read(CommandError<TemplateError>),
}

/// Every template's commands, and what resolving one for a send needs.
pub struct TemplateLibrary {
    pub commands: Arc<Commands<Template>>,
    /// Compiled schemas by template and version: a version never changes,
    /// so neither does its schema.
    checks: Mutex<HashMap<(TemplateKey, u64), Arc<VariablesCheck>>>,
}

impl TemplateLibrary {
    pub fn new(commands: Arc<Commands<Template>>) -> Self {
        Self {
            commands,
            checks: Mutex::new(HashMap::new()),
        }
    }

    /// Template `key` at `version` (None: the published one), rendered
    /// with `variables`.
    pub async fn resolve(
        &self,
        key: &TemplateKey,
        version: Option<u64>,
        variables: &Data,
    ) -> Result<TemplateUse, TemplateProblem> {
        let current = self
            .commands
            .current(key.as_str(), None)
            .await
            .map_err(TemplateProblem::Read)?;
        self.resolve_in(key, &current.state, version, variables)
    }

    /// As [`resolve`](Self::resolve), on a template already read.
    pub fn resolve_in(
        &self,
        key: &TemplateKey,
        template: &Template,
        version: Option<u64>,
        variables: &Data,
    ) -> Result<TemplateUse, TemplateProblem> {
        let chosen = template.version(version).map_err(|error| match error {
            TemplateError::NoVersions => TemplateProblem::Unknown(key.clone()),
            error => TemplateProblem::Version {
                key: key.clone(),
                error,
            },
        })?;
        self.check(key, chosen, variables)?;
        let locales =
            chosen
                .content
                .render(variables)
                .map_err(|error| TemplateProblem::Render {
                    key: key.clone(),
                    version: chosen.number,
                    error,
                })?;
        Ok(TemplateUse {
            key: key.clone(),
            version: chosen.number,
            default_locale: chosen.content.default_locale.clone(),
            locales,
        })
    }

    fn check(
        &self,
        key: &TemplateKey,
        version: &TemplateVersion,
        variables: &Data,
    ) -> Result<(), TemplateProblem> {
        let Some(schema) = &version.content.schema else {
            return Ok(());
        };
        let id = (key.clone(), version.number);
        let cached = self.checks.lock().ok().and_then(|c| c.get(&id).cloned());
        let check = match cached {
            Some(check) => check,
            None => {
                let violations = |why: String| TemplateProblem::Variables {
                    key: key.clone(),
                    version: version.number,
                    violations: vec![(String::new(), format!("the schema cannot be used: {why}"))],
                };
                // Checked when the version was added; a schema this release
                // reads differently refuses rather than passes.
                let check = Arc::new(VariablesCheck::compile(&schema.0).map_err(violations)?);
                if let Ok(mut checks) = self.checks.lock() {
                    if checks.len() >= CHECKS_MAX {
                        checks.clear();
                    }
                    checks.insert(id, check.clone());
                }
                check
            }
        };
        let violations = check.violations(&serde_json::Value::Object(variables.clone()));
        if violations.is_empty() {
            return Ok(());
        }
        Err(TemplateProblem::Variables {
            key: key.clone(),
            version: version.number,
            violations,
        })
    }
}
