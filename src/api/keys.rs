//! `/v1/keys` (admin): create, list and revoke server API keys; and
//! `POST /v1/users/{user}/token` (send or admin): a user token.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;
use tracing::instrument;

use super::context::RequestContext;
use super::json::StrictJson;
use super::notifications::metadata;
use super::params::{GrantsRule, KeyIdRule, KeyNameRule, ScopeRule, Text, UserRule};
use super::problem::ApiError;
use super::ApiTags;
use crate::access::keys::{KeyEntry, Source};
use crate::access::lifecycle::KeyCommandError;
use crate::access::Grant;
use crate::domain::{KeyName, Scope};
use crate::AppState;

/// A key to create.
#[derive(Object, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// 1–64 letters, digits, `.`, `_`, `-` (`billing`).
    pub name: Text<KeyNameRule>,
    /// What the key may do: `send`, `read`, `admin`; at least one.
    #[oai(validator(min_items = 1, max_items = 3))]
    pub scopes: Vec<Text<ScopeRule>>,
}

/// A key just created: the secret is shown this once.
#[derive(Object, Debug)]
pub struct CreatedKey {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// Send it as `Authorization: Bearer <secret>`. tidings keeps only its
    /// digest: store it now, it cannot be shown again.
    pub secret: String,
    /// The secret's first characters, as lists show them.
    pub prefix: String,
    /// The log position of the key's creation.
    pub cursor: String,
}

/// A key as listed (never its secret).
#[derive(Object, Debug)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// The secret's first characters (empty for the setting's keys).
    pub prefix: String,
    /// `store` (created by a command) or `setting` (TIDINGS_API_KEYS).
    pub source: String,
    /// Null for the setting's keys.
    #[oai(nullable)]
    pub created_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it last authenticated a request (on any instance, to within a
    /// few seconds, with PostgreSQL); null: never.
    #[oai(nullable)]
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<&KeyEntry> for KeyView {
    fn from(k: &KeyEntry) -> Self {
        Self {
            id: k.id.clone(),
            name: k.name.to_string(),
            scopes: k.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            prefix: k.prefix.clone(),
            source: k.source.as_str().to_owned(),
            created_at: k.created_at,
            revoked_at: k.revoked_at,
            last_used_at: k.last_used(),
        }
    }
}

#[derive(Object, Debug)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

#[derive(Object, Debug)]
pub struct RevokedKey {
    pub id: String,
    /// False when the key already was revoked.
    pub changed: bool,
    pub cursor: String,
}

/// A user token.
#[derive(Object, Debug)]
pub struct IssuedToken {
    /// Send it as `Authorization: Bearer <token>`.
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(ApiResponse)]
pub enum CreateKeyResponse {
    /// Created; the secret is in this answer only.
    #[oai(status = 201)]
    Created(Json<CreatedKey>),
}

#[derive(ApiResponse)]
pub enum KeyListResponse {
    #[oai(status = 200)]
    Ok(Json<KeyList>),
}

#[derive(ApiResponse)]
pub enum RevokeResponse {
    /// Revoked (or already was): refused on this instance at once, on the
    /// others within a second.
    #[oai(status = 200)]
    Ok(Json<RevokedKey>),
}

#[derive(ApiResponse)]
pub enum TokenResponse {
    #[oai(status = 201)]
    Created(Json<IssuedToken>),
}

pub struct KeysApi {
    pub state: Arc<AppState>,
}

impl From<KeyCommandError> for ApiError {
    fn from(err: KeyCommandError) -> Self {
        match err {
            KeyCommandError::Command(e) => e.into(),
            KeyCommandError::Random(e) => ApiError::internal(&e),
        }
    }
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Access")]
impl KeysApi {
    /// Create an API key
    ///
    /// Answers the secret once; tidings stores only its digest. The key's
    /// creation is an event (who created it, when).
    #[oai(path = "/keys", method = "post", operation_id = "createKey")]
    #[instrument(skip_all)]
    async fn create(
        &self,
        ctx: Data<&RequestContext>,
        body: StrictJson<CreateKeyRequest>,
    ) -> Result<CreateKeyResponse, ApiError> {
        let name =
            KeyName::parse(body.0.name.as_str()).map_err(|e| ApiError::invalid("name", e.0))?;
        let mut scopes = body
            .0
            .scopes
            .iter()
            .map(|s| Scope::parse(s.as_str()).map_err(|e| ApiError::invalid("scopes", e.0)))
            .collect::<Result<Vec<_>, _>>()?;
        if !(1..=Scope::ALL.len()).contains(&body.0.scopes.len()) {
            return Err(ApiError::invalid(
                "scopes",
                format!(
                    "{} given; list 1 to {} of send, read, admin",
                    body.0.scopes.len(),
                    Scope::ALL.len()
                ),
            ));
        }
        scopes.sort();
        scopes.dedup();
        let created = self
            .state
            .keys
            .create(name.clone(), scopes.clone(), &metadata(&ctx))
            .await?;
        Ok(CreateKeyResponse::Created(Json(CreatedKey {
            id: created.id,
            name: name.to_string(),
            scopes: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            secret: created.secret,
            prefix: created.prefix,
            cursor: created.position.to_cursor(),
        })))
    }

    /// List API keys
    ///
    /// Every key, revoked ones too, without secrets.
    #[oai(path = "/keys", method = "get", operation_id = "listKeys")]
    async fn list(&self) -> Result<KeyListResponse, ApiError> {
        let keys = self.state.keys.ring.keys();
        // Other instances' last uses, where they are recorded.
        let used = match &self.state.pool {
            Some(pool) => crate::access::usage::read(pool).await?,
            None => Default::default(),
        };
        let keys = keys
            .iter()
            .map(|k| {
                let mut view = KeyView::from(&**k);
                view.last_used_at = view.last_used_at.max(used.get(&k.id).copied());
                view
            })
            .collect();
        Ok(KeyListResponse::Ok(Json(KeyList { keys })))
    }

    /// Revoke an API key
    ///
    /// Requests with it are refused on this instance at once and on every
    /// other within a second. The revocation is an event.
    #[oai(path = "/keys/:id/revoke", method = "post", operation_id = "revokeKey")]
    #[instrument(skip_all)]
    async fn revoke(
        &self,
        ctx: Data<&RequestContext>,
        /// The key's id (from the list).
        id: Path<Text<KeyIdRule>>,
    ) -> Result<RevokeResponse, ApiError> {
        let id = id.0.as_str();
        if let Some(key) = self
            .state
            .keys
            .ring
            .keys()
            .into_iter()
            .find(|k| k.id == id && k.source == Source::Setting)
        {
            return Err(ApiError::conflict(
                "setting-key",
                "Key from the setting",
                format!(
                    "`{}` comes from TIDINGS_API_KEYS; remove it there and restart to revoke it",
                    key.name
                ),
            ));
        }
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(ApiError::not_found(format!("no API key `{id}` exists")));
        }
        let (changed, position) = self.state.keys.revoke(id, &metadata(&ctx)).await?;
        Ok(RevokeResponse::Ok(Json(RevokedKey {
            id: id.to_owned(),
            changed,
            cursor: position.to_cursor(),
        })))
    }

    /// Issue a user token
    ///
    /// A signed token for `user`: it reaches only that user's inbox, that
    /// user's notifications and their lifecycle commands, and that user's
    /// stream topics. `grants` narrows it (`read`: look and subscribe;
    /// `write`: change notifications); absent, both.
    #[oai(
        path = "/users/:user/token",
        method = "post",
        operation_id = "issueUserToken"
    )]
    async fn token(
        &self,
        user: Path<Text<UserRule>>,
        /// Comma-separated grants (`read`, `write`); absent: both.
        grants: Query<Option<Text<GrantsRule>>>,
    ) -> Result<TokenResponse, ApiError> {
        let user = super::params::path_user(user.0.as_str())?;
        let Some(tokens) = &self.state.access.tokens else {
            return Err(ApiError::conflict(
                "no-token-key",
                "User tokens are not configured",
                "set TIDINGS_JWT_SECRET (or TIDINGS_JWT_PUBLIC_KEY with TIDINGS_JWT_PRIVATE_KEY) to issue user tokens",
            ));
        };
        let grants = match grants.0 {
            None => None,
            Some(list) => {
                let mut parsed = Vec::new();
                for g in list.as_str().split(',') {
                    parsed.push(match g.trim() {
                        "read" => Grant::Read,
                        "write" => Grant::Write,
                        other => {
                            return Err(ApiError::invalid(
                                "query.grants",
                                format!("`{other}` is not a grant; use read, write"),
                            ))
                        }
                    });
                }
                parsed.sort_by_key(|g| *g as u8);
                parsed.dedup();
                Some(parsed)
            }
        };
        let (token, expires_at) = tokens
            .issue(&user, grants)
            .map_err(|e| ApiError::conflict("cannot-sign", "Cannot sign tokens", e.to_string()))?;
        Ok(TokenResponse::Created(Json(IssuedToken {
            token,
            expires_at,
        })))
    }
}
