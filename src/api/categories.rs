//! `GET /v1/categories`, `GET|PUT /v1/categories/{category}`: a
//! category's default channels and whether it is critical (an admin's).

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;
use tracing::instrument;

use super::context::RequestContext;
use super::json::StrictJson;
use super::notifications::metadata;
use super::params::{CategoryRule, ChannelRule, Text};
use super::preferences::done;
use super::problem::{ApiError, FieldProblem};
use super::views::rfc3339;
use super::ApiTags;
use crate::domain::category::{CategoryCommand, CategoryConfig, CategoryError};
use crate::domain::preferences::CategorySettings;
use crate::domain::{Category, Channel};
use crate::storage::Position;
use crate::AppState;

/// A category's settings.
#[derive(Object, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[oai(rename = "CategorySettings")]
pub struct CategoryBody {
    /// The channels on unless a preference turns them off (`[]`: only
    /// those a preference turns on).
    #[oai(validator(max_items = 5))]
    pub default_channels: Vec<Text<ChannelRule>>,
    /// No preference (nor quiet hours) can mute it: password resets,
    /// security alerts.
    pub critical: bool,
}

/// A category's settings, as answered.
#[derive(Object, Debug)]
#[oai(rename = "Category")]
pub struct CategoryView {
    pub category: String,
    pub default_channels: Vec<Text<ChannelRule>>,
    pub critical: bool,
    /// False: nobody configured it (every channel, not critical).
    pub configured: bool,
    pub version: u64,
    #[oai(nullable)]
    pub updated_at: Option<String>,
    pub cursor: String,
    #[oai(skip_serializing_if_is_none)]
    pub changed: Option<bool>,
}

impl CategoryView {
    fn of(
        category: &Category,
        state: &CategoryConfig,
        position: Position,
        changed: Option<bool>,
    ) -> Self {
        let settings = state.settings.as_ref();
        let default_channels = match settings {
            Some(s) => s.default_channels.iter().copied().collect(),
            None => Channel::ALL.to_vec(),
        };
        Self {
            category: category.as_str().to_owned(),
            default_channels: default_channels
                .iter()
                .map(|c: &Channel| Text::new(c.as_str()))
                .collect(),
            critical: settings.is_some_and(|s| s.critical),
            configured: settings.is_some(),
            version: state.version,
            updated_at: state.configured_at.map(rfc3339),
            cursor: position.to_cursor(),
            changed,
        }
    }
}

#[derive(Object, Debug)]
pub struct CategoryList {
    /// Every configured category, by name.
    pub items: Vec<CategoryView>,
}

#[derive(ApiResponse)]
pub enum CategoryResponse {
    #[oai(status = 200)]
    Ok(Json<CategoryView>),
}

#[derive(ApiResponse)]
pub enum CategoryListResponse {
    #[oai(status = 200)]
    Ok(Json<CategoryList>),
}

impl From<CategoryError> for ApiError {
    fn from(err: CategoryError) -> Self {
        match err {}
    }
}

fn parse_category(raw: &str) -> Result<Category, ApiError> {
    Category::parse(raw).map_err(|e| ApiError::invalid("path.category", e.0))
}

pub struct CategoriesApi {
    pub state: Arc<AppState>,
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Recipients")]
impl CategoriesApi {
    /// Every configured category
    #[oai(path = "/categories", method = "get", operation_id = "listCategories")]
    async fn list_categories(&self) -> Result<CategoryListResponse, ApiError> {
        let configured = self.state.audience.configured(None).await?;
        let mut items = Vec::with_capacity(configured.len());
        for category in configured.keys() {
            let current = self
                .state
                .audience
                .categories
                .current(category.as_str(), None)
                .await?;
            items.push(CategoryView::of(
                category,
                &current.state,
                current.position,
                None,
            ));
        }
        Ok(CategoryListResponse::Ok(Json(CategoryList { items })))
    }

    /// A category's settings
    ///
    /// A category nobody configured uses every channel and is not critical.
    #[oai(
        path = "/categories/:category",
        method = "get",
        operation_id = "getCategory"
    )]
    async fn get_category(
        &self,
        category: Path<Text<CategoryRule>>,
    ) -> Result<CategoryResponse, ApiError> {
        let category = parse_category(category.0.as_str())?;
        let current = self
            .state
            .audience
            .categories
            .current(category.as_str(), None)
            .await?;
        Ok(CategoryResponse::Ok(Json(CategoryView::of(
            &category,
            &current.state,
            current.position,
            None,
        ))))
    }

    /// Configure a category
    ///
    /// Its default channels (on unless a preference turns them off) and
    /// whether it is critical (no preference, nor quiet hours, can mute
    /// it). Sends from then on resolve against it; each change is a
    /// versioned `CategoryConfigured` event.
    #[oai(
        path = "/categories/:category",
        method = "put",
        operation_id = "configureCategory"
    )]
    #[instrument(skip_all)]
    async fn configure_category(
        &self,
        ctx: Data<&RequestContext>,
        category: Path<Text<CategoryRule>>,
        body: StrictJson<CategoryBody>,
    ) -> Result<CategoryResponse, ApiError> {
        let category = parse_category(category.0.as_str())?;
        let mut errors = Vec::new();
        let mut channels = std::collections::BTreeSet::new();
        for (i, raw) in body.0.default_channels.iter().enumerate() {
            match Channel::parse(raw.as_str()) {
                Ok(c) => {
                    channels.insert(c);
                }
                Err(e) => errors.push(FieldProblem {
                    field: format!("default_channels[{i}]"),
                    message: e.0,
                }),
            }
        }
        if body.0.default_channels.len() > Channel::ALL.len() {
            errors.push(FieldProblem {
                field: "default_channels".into(),
                message: format!("at most {} channels", Channel::ALL.len()),
            });
        }
        let settings = done(
            errors,
            CategorySettings {
                default_channels: channels,
                critical: body.0.critical,
            },
        )?;
        let decided = self
            .state
            .audience
            .categories
            .execute(
                category.as_str(),
                |at| CategoryCommand::Configure {
                    settings: settings.clone(),
                    at,
                },
                &metadata(&ctx),
                false,
            )
            .await?;
        Ok(CategoryResponse::Ok(Json(CategoryView::of(
            &category,
            &decided.state,
            decided.position,
            Some(decided.changed),
        ))))
    }
}
