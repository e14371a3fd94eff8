//! `GET|PUT|PATCH /v1/users/{user}`: a recipient's profile (display name,
//! time zone, locale, tenant, channel addresses). A user nobody has
//! described is a recipient with the default profile: sending never needs
//! one first.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;
use tracing::instrument;

use super::context::RequestContext;
use super::json::{object, StrictJson};
use super::notifications::metadata;
use super::params::{
    DisplayNameRule, EmailRule, LocaleRule, PhoneRule, PushTokenRule, TenantRule, Text,
    TimeZoneRule, UserRule, WebhookUrlRule,
};
use super::problem::{ApiError, FieldProblem};
use super::views::rfc3339;
use super::ApiTags;
use crate::access::Principal;
use crate::domain::contact::{
    push_tokens, Addresses, DisplayName, Email, Locale, Phone, PushToken, TenantId, TimeZone,
    WebhookUrl, MAX_PUSH_TOKENS,
};
use crate::domain::recipient::{
    Change, Profile, ProfilePatch, Recipient, RecipientCommand, RecipientError,
};
use crate::domain::{InvalidValue, UserId};
use crate::storage::Position;
use crate::AppState;

/// Where a recipient is reached; each absent one is a channel without an
/// address.
#[derive(Object, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
#[oai(rename = "Addresses")]
pub struct AddressesBody {
    #[serde(default)]
    #[oai(nullable)]
    pub email: Option<Text<EmailRule>>,
    /// E.164.
    #[serde(default)]
    #[oai(nullable)]
    pub phone: Option<Text<PhoneRule>>,
    /// One per device, at most 10 (repeats are dropped).
    #[serde(default)]
    #[oai(nullable, validator(max_items = 10))]
    pub push_tokens: Option<Vec<Text<PushTokenRule>>>,
    /// Where the `chat` channel posts.
    #[serde(default)]
    #[oai(nullable)]
    pub webhook_url: Option<Text<WebhookUrlRule>>,
}

/// A whole profile (`PUT`): what is absent is removed.
#[derive(Object, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
#[oai(rename = "ProfileReplace")]
pub struct ProfileBody {
    #[serde(default)]
    #[oai(nullable)]
    pub display_name: Option<Text<DisplayNameRule>>,
    /// IANA (`Europe/Berlin`); absent: UTC. Quiet hours are read in it.
    #[serde(default)]
    #[oai(nullable)]
    pub time_zone: Option<Text<TimeZoneRule>>,
    #[serde(default)]
    #[oai(nullable)]
    pub locale: Option<Text<LocaleRule>>,
    /// Set by a server key only; a user token may not change it.
    #[serde(default)]
    #[oai(nullable)]
    pub tenant: Option<Text<TenantRule>>,
    #[serde(default, deserialize_with = "object::optional")]
    #[oai(nullable)]
    pub addresses: Option<AddressesBody>,
}

/// A JSON merge patch of the addresses: absent stays, `null` removes.
#[derive(Object, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
#[oai(rename = "AddressesPatch")]
pub struct AddressesPatchBody {
    #[serde(default)]
    #[oai(nullable)]
    pub email: MaybeUndefined<Text<EmailRule>>,
    #[serde(default)]
    #[oai(nullable)]
    pub phone: MaybeUndefined<Text<PhoneRule>>,
    /// Replaces the whole list.
    #[serde(default)]
    #[oai(nullable, validator(max_items = 10))]
    pub push_tokens: MaybeUndefined<Vec<Text<PushTokenRule>>>,
    #[serde(default)]
    #[oai(nullable)]
    pub webhook_url: MaybeUndefined<Text<WebhookUrlRule>>,
}

/// A JSON merge patch of the profile (RFC 7386): a field absent stays as
/// it is, `null` removes it, a value sets it.
#[derive(Object, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
#[oai(rename = "ProfilePatch")]
pub struct ProfilePatchBody {
    #[serde(default)]
    #[oai(nullable)]
    pub display_name: MaybeUndefined<Text<DisplayNameRule>>,
    #[serde(default)]
    #[oai(nullable)]
    pub time_zone: MaybeUndefined<Text<TimeZoneRule>>,
    #[serde(default)]
    #[oai(nullable)]
    pub locale: MaybeUndefined<Text<LocaleRule>>,
    /// Set by a server key only.
    #[serde(default)]
    #[oai(nullable)]
    pub tenant: MaybeUndefined<Text<TenantRule>>,
    /// `null` removes every address.
    #[serde(default, deserialize_with = "object::maybe")]
    #[oai(nullable)]
    pub addresses: MaybeUndefined<AddressesPatchBody>,
}

#[derive(Object, Debug)]
#[oai(rename = "AddressesView")]
pub struct AddressesView {
    #[oai(nullable)]
    pub email: Option<String>,
    #[oai(nullable)]
    pub phone: Option<String>,
    pub push_tokens: Vec<String>,
    #[oai(nullable)]
    pub webhook_url: Option<String>,
}

/// A recipient's profile.
#[derive(Object, Debug)]
#[oai(rename = "Profile")]
pub struct ProfileView {
    pub user: String,
    #[oai(nullable)]
    pub display_name: Option<String>,
    /// Null: UTC.
    #[oai(nullable)]
    pub time_zone: Option<String>,
    #[oai(nullable)]
    pub locale: Option<String>,
    #[oai(nullable)]
    pub tenant: Option<String>,
    pub addresses: AddressesView,
    /// How many changes the profile has had; 0: nobody described this
    /// user yet (the defaults).
    pub version: u64,
    /// RFC 3339 UTC; null for the defaults.
    #[oai(nullable)]
    pub updated_at: Option<String>,
    /// The log position of the last change (pass it as `min_position`).
    pub cursor: String,
    /// On a `PUT` or `PATCH`: false when it changed nothing (nothing was
    /// recorded).
    #[oai(skip_serializing_if_is_none)]
    pub changed: Option<bool>,
}

impl ProfileView {
    fn of(user: &UserId, state: &Recipient, position: Position, changed: Option<bool>) -> Self {
        let profile = &state.profile;
        let addresses = &profile.addresses;
        Self {
            user: user.as_str().to_owned(),
            display_name: profile.display_name.as_ref().map(|v| v.to_string()),
            time_zone: profile.time_zone.map(|tz| tz.name().to_owned()),
            locale: profile.locale.as_ref().map(|v| v.to_string()),
            tenant: profile.tenant.as_ref().map(|v| v.to_string()),
            addresses: AddressesView {
                email: addresses.email.as_ref().map(|v| v.to_string()),
                phone: addresses.phone.as_ref().map(|v| v.to_string()),
                push_tokens: addresses
                    .push_tokens
                    .iter()
                    .map(|t| t.to_string())
                    .collect(),
                webhook_url: addresses.webhook_url.as_ref().map(|v| v.to_string()),
            },
            version: state.version,
            updated_at: state.changed_at.map(rfc3339),
            cursor: position.to_cursor(),
            changed,
        }
    }
}

#[derive(ApiResponse)]
pub enum ProfileResponse {
    #[oai(status = 200)]
    Ok(Json<ProfileView>),
}

impl From<RecipientError> for ApiError {
    fn from(err: RecipientError) -> Self {
        match err {
            RecipientError::Invalid(message) => ApiError::invalid("body", message),
        }
    }
}

/// Collects every refused field, so one answer names them all.
#[derive(Default)]
struct Fields(Vec<FieldProblem>);

impl Fields {
    fn check<T>(&mut self, name: &str, result: Result<T, InvalidValue>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(FieldProblem {
                    field: name.to_owned(),
                    message: e.0,
                });
                None
            }
        }
    }

    fn optional<R, T>(
        &mut self,
        name: &str,
        value: &Option<Text<R>>,
        parse: impl Fn(&str) -> Result<T, InvalidValue>,
    ) -> Option<T> {
        value
            .as_ref()
            .and_then(|v| self.check(name, parse(v.as_str())))
    }

    fn change<R, T>(
        &mut self,
        name: &str,
        value: &MaybeUndefined<Text<R>>,
        parse: impl Fn(&str) -> Result<T, InvalidValue>,
    ) -> Change<T> {
        match value {
            MaybeUndefined::Undefined => Change::Keep,
            MaybeUndefined::Null => Change::Clear,
            MaybeUndefined::Value(v) => self
                .check(name, parse(v.as_str()))
                .map_or(Change::Keep, Change::Set),
        }
    }

    fn tokens(&mut self, name: &str, tokens: &[Text<PushTokenRule>]) -> Vec<PushToken> {
        let parsed: Vec<PushToken> = tokens
            .iter()
            .enumerate()
            .filter_map(|(i, t)| self.check(&format!("{name}[{i}]"), PushToken::parse(t.as_str())))
            .collect();
        self.check(name, push_tokens(parsed)).unwrap_or_default()
    }

    fn done<T>(self, value: T) -> Result<T, ApiError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ApiError::invalid_fields(self.0))
        }
    }
}

fn time_zone(s: &str) -> Result<TimeZone, InvalidValue> {
    TimeZone::parse(s)
}

impl ProfileBody {
    fn parse(&self) -> Result<Profile, ApiError> {
        let mut fields = Fields::default();
        let none = AddressesBody::default();
        let addresses = self.addresses.as_ref().unwrap_or(&none);
        let profile = Profile {
            display_name: fields.optional("display_name", &self.display_name, DisplayName::parse),
            time_zone: fields.optional("time_zone", &self.time_zone, time_zone),
            locale: fields.optional("locale", &self.locale, Locale::parse),
            tenant: fields.optional("tenant", &self.tenant, TenantId::parse),
            addresses: Addresses {
                email: fields.optional("addresses.email", &addresses.email, Email::parse),
                phone: fields.optional("addresses.phone", &addresses.phone, Phone::parse),
                push_tokens: addresses
                    .push_tokens
                    .as_deref()
                    .map(|t| fields.tokens("addresses.push_tokens", t))
                    .unwrap_or_default(),
                webhook_url: fields.optional(
                    "addresses.webhook_url",
                    &addresses.webhook_url,
                    WebhookUrl::parse,
                ),
            },
        };
        fields.done(profile)
    }
}

impl ProfilePatchBody {
    fn parse(&self) -> Result<ProfilePatch, ApiError> {
        let mut fields = Fields::default();
        let mut patch = ProfilePatch {
            display_name: fields.change("display_name", &self.display_name, DisplayName::parse),
            time_zone: fields.change("time_zone", &self.time_zone, time_zone),
            locale: fields.change("locale", &self.locale, Locale::parse),
            tenant: fields.change("tenant", &self.tenant, TenantId::parse),
            ..ProfilePatch::default()
        };
        match &self.addresses {
            MaybeUndefined::Undefined => {}
            MaybeUndefined::Null => {
                patch.email = Change::Clear;
                patch.phone = Change::Clear;
                patch.push_tokens = Change::Clear;
                patch.webhook_url = Change::Clear;
            }
            MaybeUndefined::Value(a) => {
                patch.email = fields.change("addresses.email", &a.email, Email::parse);
                patch.phone = fields.change("addresses.phone", &a.phone, Phone::parse);
                patch.webhook_url =
                    fields.change("addresses.webhook_url", &a.webhook_url, WebhookUrl::parse);
                patch.push_tokens = match &a.push_tokens {
                    MaybeUndefined::Undefined => Change::Keep,
                    MaybeUndefined::Null => Change::Clear,
                    MaybeUndefined::Value(t) => {
                        Change::Set(fields.tokens("addresses.push_tokens", t))
                    }
                };
            }
        }
        fields.done(patch)
    }
}

/// A user token may describe its own user, but not move itself to another
/// tenant: tenant defaults are the service's to assign.
fn tenant_is_the_services(principal: &Principal, names_tenant: bool) -> Result<(), ApiError> {
    if names_tenant && matches!(principal, Principal::User(_)) {
        return Err(ApiError::forbidden(
            "a user token may not set `tenant`; the service's backend assigns tenants with a server key",
        ));
    }
    Ok(())
}

pub struct RecipientsApi {
    pub state: Arc<AppState>,
}

impl RecipientsApi {
    async fn run(
        &self,
        user: &UserId,
        ctx: &RequestContext,
        command: impl Fn(chrono::DateTime<chrono::Utc>) -> RecipientCommand,
    ) -> Result<ProfileResponse, ApiError> {
        let decided = self
            .state
            .audience
            .recipients
            .execute(user.as_str(), command, &metadata(ctx), false)
            .await?;
        // The position of the last change, which a no-op does not move.
        Ok(ProfileResponse::Ok(Json(ProfileView::of(
            user,
            &decided.state,
            decided.position,
            Some(decided.changed),
        ))))
    }
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Recipients")]
impl RecipientsApi {
    /// A recipient's profile
    ///
    /// A user nobody has described answers the defaults (version 0): every
    /// user is a recipient.
    #[oai(path = "/users/:user", method = "get", operation_id = "getRecipient")]
    async fn get(&self, user: Path<Text<UserRule>>) -> Result<ProfileResponse, ApiError> {
        let user = super::params::path_user(user.0.as_str())?;
        let current = self
            .state
            .audience
            .recipients
            .current(user.as_str(), None)
            .await
            .map_err(ApiError::from)?;
        Ok(ProfileResponse::Ok(Json(ProfileView::of(
            &user,
            &current.state,
            current.position,
            None,
        ))))
    }

    /// Replace a recipient's profile
    ///
    /// The whole profile: a field absent is removed. The profile after the
    /// change is recorded as one event; a replace that changes nothing
    /// records nothing (`changed: false`).
    #[oai(
        path = "/users/:user",
        method = "put",
        operation_id = "replaceRecipient"
    )]
    #[instrument(skip_all)]
    async fn replace(
        &self,
        ctx: Data<&RequestContext>,
        user: Path<Text<UserRule>>,
        body: StrictJson<ProfileBody>,
    ) -> Result<ProfileResponse, ApiError> {
        let user = super::params::path_user(user.0.as_str())?;
        tenant_is_the_services(&ctx.principal, body.0.tenant.is_some())?;
        let profile = body.0.parse()?;
        // A user's replace keeps the tenant the backend assigned.
        let keep_tenant = matches!(ctx.principal, Principal::User(_));
        self.run(&user, &ctx, |at| RecipientCommand::Replace {
            profile: profile.clone(),
            keep_tenant,
            at,
        })
        .await
    }

    /// Change part of a recipient's profile
    ///
    /// A JSON merge patch (RFC 7386): a field absent stays as it is, `null`
    /// removes it, a value sets it (`push_tokens` replaces the list).
    #[oai(
        path = "/users/:user",
        method = "patch",
        operation_id = "patchRecipient"
    )]
    #[instrument(skip_all)]
    async fn patch(
        &self,
        ctx: Data<&RequestContext>,
        user: Path<Text<UserRule>>,
        body: StrictJson<ProfilePatchBody>,
    ) -> Result<ProfileResponse, ApiError> {
        let user = super::params::path_user(user.0.as_str())?;
        tenant_is_the_services(&ctx.principal, !body.0.tenant.is_undefined())?;
        let patch = body.0.parse()?;
        self.run(&user, &ctx, |at| RecipientCommand::Patch {
            patch: patch.clone(),
            at,
        })
        .await
    }
}

/// `MAX_PUSH_TOKENS` is what the schemas' `max_items` says.
const _: () = assert!(MAX_PUSH_TOKENS == 10);
