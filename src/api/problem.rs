//! Every error answer is `application/problem+json` (RFC 9457): a `type`, a
//! `title`, the `status` and a `detail` that says what to fix. Handler errors
//! are `ApiError`; the framework's own errors (malformed parameters, unknown
//! routes, wrong methods) are converted in one place by `problem_from_error`.

use crate::commands::templates::TemplateProblem;
use crate::domain::template::TemplateError;
use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};
use tracing::error;

use crate::commands::CommandError;
use crate::domain::NotificationError;
use crate::storage::{error_chain, StorageError};

pub const PROBLEM_JSON: &str = "application/problem+json";

/// One field that was refused, and why.
#[derive(Object, Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    /// The field's name in the request (`title`, `query.limit`).
    pub field: String,
    pub message: String,
}

/// An error answer (RFC 9457 problem details).
#[derive(Object, Debug, Clone)]
pub struct Problem {
    /// A URI naming the kind of problem; stable, so clients can branch on it.
    #[oai(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    pub status: u16,
    /// What went wrong with this request and what to change.
    pub detail: String,
    /// The refused fields, for validation problems.
    #[oai(skip_serializing_if_is_none)]
    pub errors: Option<Vec<FieldProblem>>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:tidings:problem:{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: None,
        }
    }
}

#[derive(ApiResponse, Debug)]
pub enum ApiError {
    /// The request is malformed: JSON that does not parse, a wrong type, an unknown field.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// The credential is valid but lacks the right to this operation or resource.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    /// No such notification.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The command is illegal in the notification's current state, or it kept conflicting.
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
    /// The body is larger than the configured limit.
    #[oai(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Json<Problem>),
    /// The body is not `application/json`.
    #[oai(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Json<Problem>),
    /// The request is well-formed but a value is not acceptable.
    #[oai(status = 422, content_type = "application/problem+json")]
    Unprocessable(Json<Problem>),
    /// Something failed inside tidings; the cause is logged under the request id.
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
    /// A dependency is down or a read model has not caught up yet; retry shortly.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(
        Json<Problem>,
        /// Seconds to wait before retrying.
        #[oai(header = "Retry-After")]
        u32,
    ),
}

impl ApiError {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::BadRequest(Json(Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-request",
            "Malformed request",
            detail,
        )))
    }

    /// A parameter that is not of its kind at all (a path id that is no UUID).
    pub fn malformed(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut problem = Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-request",
            "Malformed request",
            format!("{field}: {message}"),
        );
        problem.errors = Some(vec![FieldProblem {
            field: field.to_owned(),
            message,
        }]);
        Self::BadRequest(Json(problem))
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::Forbidden(Json(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            detail,
        )))
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::NotFound(Json(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            detail,
        )))
    }

    pub fn conflict(slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self::Conflict(Json(Problem::new(
            StatusCode::CONFLICT,
            slug,
            title,
            detail,
        )))
    }

    pub fn too_large(limit: usize) -> Self {
        Self::PayloadTooLarge(Json(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Request body too large",
            format!("the request body is larger than {limit} bytes; send a smaller body"),
        )))
    }

    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::UnsupportedMediaType(Json(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            detail,
        )))
    }

    /// One field refused.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::invalid_fields(vec![FieldProblem {
            field: field.to_owned(),
            message: message.into(),
        }])
    }

    /// A stored event this release cannot read stands in the way: 409,
    /// naming it, saying what is refused until a release reads it.
    fn unreadable_event(event: &str, refused: &str) -> Self {
        Self::conflict(
            "unreadable-event",
            "The history cannot be read",
            format!(
                "{event}; {refused} until a release that reads that event is deployed \
                 (operators: see the poison-event runbook)"
            ),
        )
    }

    /// Several fields refused at once, so the caller can fix them in one go.
    pub fn invalid_fields(errors: Vec<FieldProblem>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        let mut problem = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "Invalid request values",
            detail,
        );
        problem.errors = Some(errors);
        Self::Unprocessable(Json(problem))
    }

    pub fn unprocessable(slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self::Unprocessable(Json(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            slug,
            title,
            detail,
        )))
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::Unavailable(
            Json(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                detail,
            )),
            1,
        )
    }

    /// Logs the cause once; the answer stays opaque.
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        error!(error = %error_chain(cause), "request failed unexpectedly");
        Self::Internal(Json(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "tidings failed to handle this request; the cause is logged under its X-Request-Id",
        )))
    }
}

impl From<NotificationError> for ApiError {
    fn from(err: NotificationError) -> Self {
        use NotificationError as E;
        let detail = err.to_string();
        match err {
            E::NotFound => Self::not_found(detail),
            E::AlreadyExists => Self::conflict("already-exists", "Already exists", detail),
            E::Deleted
            | E::Cancelled
            | E::NotDelivered(_)
            | E::AlreadyDelivered
            | E::ChannelNotRequested(_)
            | E::ChannelAlreadyDelivered(_)
            | E::NotYetDue { .. }
            | E::Suppressed => Self::conflict(
                "illegal-transition",
                "Not allowed in the current state",
                detail,
            ),
            E::ChannelSuppressed { .. } => {
                Self::conflict("channel-suppressed", "Channel suppressed", detail)
            }
            E::HeldUntil { .. } => Self::conflict("held", "Held by quiet hours", detail),
            E::Batched(_) => Self::conflict("batched", "Held for a digest", detail),
            E::Digested(_) => Self::conflict("digested", "Delivered in a digest", detail),
            E::AudienceUnavailable(_) => {
                error!(error = %detail, "a create could not read the recipient's preferences");
                Self::unavailable("the recipient's preferences could not be read; retry shortly")
            }
            E::AudienceUnreadable(_) => {
                Self::unreadable_event(&detail, "creates for this recipient are refused")
            }
        }
    }
}

impl From<crate::domain::ApiKeyError> for ApiError {
    fn from(err: crate::domain::ApiKeyError) -> Self {
        use crate::domain::ApiKeyError as E;
        let detail = err.to_string();
        match err {
            E::NotFound => Self::not_found(detail),
            E::AlreadyExists => Self::conflict("already-exists", "Already exists", detail),
        }
    }
}

impl<E: std::error::Error + Into<ApiError>> From<CommandError<E>> for ApiError {
    fn from(err: CommandError<E>) -> Self {
        match err {
            CommandError::Rejected(e) => e.into(),
            CommandError::Conflict { .. } => Self::conflict(
                "concurrent-modification",
                "Concurrent modification",
                format!("{err}; retry the request"),
            ),
            // Stored state (the key's first request) is what the request
            // conflicts with, as with an illegal transition: 409.
            CommandError::IdempotencyMismatch(_) => Self::conflict(
                "idempotency-key-reused",
                "Idempotency-Key reused",
                format!("{err}; use a new key for a different request"),
            ),
            CommandError::Unreadable(_) => {
                Self::unreadable_event(&err.to_string(), "commands on this aggregate are refused")
            }
            CommandError::Full { .. } => Self::Unavailable(
                Json(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "memory-full",
                    "The memory store is full",
                    format!(
                        "{err}; reads go on. Run tidings on PostgreSQL (DATABASE_URL) to keep more"
                    ),
                )),
                30,
            ),
            CommandError::Unavailable(_) => {
                error!(error = %error_chain(&err), "event store unavailable");
                Self::unavailable("the event store is unavailable; retry shortly")
            }
            CommandError::Internal(_) => Self::internal(&err),
        }
    }
}

impl From<crate::projections::ProjectionError> for ApiError {
    fn from(err: crate::projections::ProjectionError) -> Self {
        match err {
            crate::projections::ProjectionError::Storage(e) => e.into(),
            other => Self::internal(&other),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> Self {
        match err {
            StorageError::Unavailable(_) => {
                error!(error = %error_chain(&err), "storage unavailable");
                Self::unavailable("the store is unavailable; retry shortly")
            }
            StorageError::Backend(_) => Self::internal(&err),
        }
    }
}

/// Turns any error that reached the top of the route tree into a problem
/// answer. Errors that already are answers (`ApiError`) pass through as they are.
pub async fn problem_from_error(err: poem::Error) -> Response {
    if err.is_from_response() {
        return err.into_response();
    }
    let status = err.status();
    let api_error = match status {
        StatusCode::BAD_REQUEST => ApiError::bad_request(err.to_string()),
        StatusCode::NOT_FOUND => ApiError::not_found(
            "there is no such endpoint; the API is described at /docs and /openapi.json",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(Json(Problem::new(
            status,
            "payload-too-large",
            "Request body too large",
            err.to_string(),
        ))),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::unsupported_media_type(format!(
            "{err}; send the body with `Content-Type: application/json`"
        )),
        s if s.is_server_error() => ApiError::internal(&err),
        s => {
            let title = s.canonical_reason().unwrap_or("Request refused");
            let slug = title.to_ascii_lowercase().replace(' ', "-");
            let problem = Problem::new(s, &slug, title, err.to_string());
            return problem_response(problem);
        }
    };
    api_error.into_response()
}

/// A problem answer for statuses `ApiError` does not list (405, 406, ...).
pub fn problem_response(problem: Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = poem_openapi::types::ToJSON::to_json_string(&problem);
    Response::builder()
        .status(status)
        .content_type(PROBLEM_JSON)
        .body(body)
}

impl From<crate::domain::batch::BatchError> for ApiError {
    fn from(err: crate::domain::batch::BatchError) -> Self {
        Self::not_found(err.to_string())
    }
}

impl From<TemplateError> for ApiError {
    fn from(err: TemplateError) -> Self {
        let detail = err.to_string();
        match err {
            TemplateError::NoSuchVersion(_) | TemplateError::NoVersions => Self::not_found(detail),
            TemplateError::NothingPublished
            | TemplateError::NotEarlier { .. }
            | TemplateError::NothingToRollBackTo
            | TemplateError::TooManyVersions => Self::conflict(
                "template-state",
                "Not possible in the template's state",
                detail,
            ),
        }
    }
}

/// A send's (or a preview's) template problem, as a 422 naming the field
/// to fix: `template`, the version field, or where in `variables`.
pub fn template_problem(err: TemplateProblem, version_field: &str) -> ApiError {
    let detail = err.to_string();
    match err {
        TemplateProblem::Unknown(_) => ApiError::invalid("template", detail),
        TemplateProblem::Version { .. } => ApiError::invalid(version_field, detail),
        TemplateProblem::Variables {
            key,
            version,
            violations,
        } => ApiError::invalid_fields(
            violations
                .into_iter()
                .map(|(pointer, why)| FieldProblem {
                    field: format!("variables{}", pointer.replace('/', ".")),
                    message: format!("{why} (the schema of template `{key}` version {version})"),
                })
                .collect(),
        ),
        TemplateProblem::Render { .. } => ApiError::invalid("variables", detail),
        TemplateProblem::Read(e) => e.into(),
    }
}

/// A create's enrollment problem, as a 422 naming `experiment`.
pub fn enroll_problem(err: crate::commands::experiments::EnrollProblem) -> ApiError {
    use crate::commands::experiments::EnrollProblem as P;
    match err {
        P::Read(e) => e.into(),
        P::Assign(e) => e.into(),
        other => ApiError::invalid("experiment", other.to_string()),
    }
}
