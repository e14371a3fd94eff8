//! `GET|PUT /v1/tenants/{tenant}/preferences`: what a tenant's users get
//! unless they choose otherwise.

use std::collections::BTreeMap;
use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;
use tracing::instrument;

use super::context::RequestContext;
use super::json::{object, StrictJson};
use super::notifications::metadata;
use super::params::{TenantRule, Text};
use super::preferences::{
    categories_view, done, parse_categories, parse_tenant, switches_view, CategoryChoiceBody,
    CategoryChoiceView, SwitchesBody,
};
use super::problem::ApiError;
use super::views::rfc3339;
use super::ApiTags;
use crate::domain::contact::TenantId;
use crate::domain::preferences::Preferences;
use crate::domain::tenant::{Tenant, TenantCommand, TenantError};
use crate::storage::Position;
use crate::AppState;

/// A tenant's defaults, whole (quiet hours are each user's own).
#[derive(Object, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
#[oai(rename = "TenantDefaultsReplace")]
pub struct TenantDefaultsBody {
    #[serde(default, deserialize_with = "object::optional")]
    #[oai(nullable)]
    pub channels: Option<SwitchesBody>,
    /// Per category (at most 100).
    #[serde(default, deserialize_with = "object::map_of")]
    #[oai(nullable, validator(max_properties = 100))]
    pub categories: Option<BTreeMap<String, CategoryChoiceBody>>,
}

impl TenantDefaultsBody {
    fn parse(&self) -> Result<Preferences, ApiError> {
        let mut errors = Vec::new();
        let categories = parse_categories(self.categories.as_ref(), &mut errors);
        let defaults = Preferences {
            channels: self
                .channels
                .as_ref()
                .map(SwitchesBody::switches)
                .unwrap_or_default(),
            categories,
            quiet_hours: None,
        };
        done(errors, defaults)
    }
}

/// A tenant's defaults.
#[derive(Object, Debug)]
#[oai(rename = "TenantDefaults")]
pub struct TenantDefaultsView {
    pub tenant: String,
    pub channels: BTreeMap<String, bool>,
    pub categories: BTreeMap<String, CategoryChoiceView>,
    pub version: u64,
    #[oai(nullable)]
    pub updated_at: Option<String>,
    pub cursor: String,
    #[oai(skip_serializing_if_is_none)]
    pub changed: Option<bool>,
}

impl TenantDefaultsView {
    fn of(tenant: &TenantId, state: &Tenant, position: Position, changed: Option<bool>) -> Self {
        Self {
            tenant: tenant.to_string(),
            channels: switches_view(&state.defaults.channels),
            categories: categories_view(&state.defaults),
            version: state.version,
            updated_at: state.changed_at.map(rfc3339),
            cursor: position.to_cursor(),
            changed,
        }
    }
}

#[derive(ApiResponse)]
pub enum TenantDefaultsResponse {
    #[oai(status = 200)]
    Ok(Json<TenantDefaultsView>),
}

impl From<TenantError> for ApiError {
    fn from(err: TenantError) -> Self {
        match err {}
    }
}

pub struct TenantsApi {
    pub state: Arc<AppState>,
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Recipients")]
impl TenantsApi {
    /// A tenant's preference defaults
    #[oai(
        path = "/tenants/:tenant/preferences",
        method = "get",
        operation_id = "getTenantDefaults"
    )]
    async fn get_tenant(
        &self,
        tenant: Path<Text<TenantRule>>,
    ) -> Result<TenantDefaultsResponse, ApiError> {
        let tenant = parse_tenant("path.tenant", tenant.0.as_str())?;
        let current = self
            .state
            .audience
            .tenants
            .current(tenant.as_str(), None)
            .await?;
        Ok(TenantDefaultsResponse::Ok(Json(TenantDefaultsView::of(
            &tenant,
            &current.state,
            current.position,
            None,
        ))))
    }

    /// Set a tenant's preference defaults
    ///
    /// What the tenant's users get unless they choose otherwise (they beat
    /// the category defaults; the users' own choices beat them). The whole
    /// set; each change is a versioned `TenantDefaultsChanged` event.
    #[oai(
        path = "/tenants/:tenant/preferences",
        method = "put",
        operation_id = "setTenantDefaults"
    )]
    #[instrument(skip_all)]
    async fn set_tenant(
        &self,
        ctx: Data<&RequestContext>,
        tenant: Path<Text<TenantRule>>,
        body: StrictJson<TenantDefaultsBody>,
    ) -> Result<TenantDefaultsResponse, ApiError> {
        let tenant = parse_tenant("path.tenant", tenant.0.as_str())?;
        let defaults = body.0.parse()?;
        let decided = self
            .state
            .audience
            .tenants
            .execute(
                tenant.as_str(),
                |at| TenantCommand::SetDefaults {
                    defaults: defaults.clone(),
                    at,
                },
                &metadata(&ctx),
                false,
            )
            .await?;
        Ok(TenantDefaultsResponse::Ok(Json(TenantDefaultsView::of(
            &tenant,
            &decided.state,
            decided.position,
            Some(decided.changed),
        ))))
    }
}
