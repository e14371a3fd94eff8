//! `StrictJson<T>`: a JSON request body parsed by serde with exact types.
//!
//! poem-openapi's own `Json<T>` coerces (`{"title": 17}` becomes `"17"`) and
//! answers errors in text/plain. Here a wrong type, an unknown field or a
//! syntax error is a 400 problem naming the spot, an over-long body is a 413,
//! and the schema in the OpenAPI document still comes from `T`.

use poem::{Request, RequestBody};
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaMediaType, MetaRequest, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use serde::de::DeserializeOwned;

use super::problem::ApiError;

/// The largest request body accepted, set by the app as request data.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

pub struct StrictJson<T>(pub T);

impl<T: Type> Payload for StrictJson<T> {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        matches!(content_type.parse::<mime::Mime>(), Ok(m) if m.type_() == "application"
            && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json")))
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + DeserializeOwned> ParsePayload for StrictJson<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let limit = request
            .data::<BodyLimit>()
            .copied()
            .unwrap_or(BodyLimit(64 * 1024))
            .0;
        let bytes = body
            .take()?
            .into_bytes_limit(limit)
            .await
            .map_err(|e| match e {
                poem::error::ReadBodyError::PayloadTooLarge => ApiError::too_large(limit),
                other => {
                    ApiError::bad_request(format!("the request body could not be read: {other}"))
                }
            })?;
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            None => {
                return Err(
                    ApiError::bad_request("the request body is empty; send a JSON object").into(),
                )
            }
            // serde would read a JSON array as a struct's fields in order.
            Some(b'{') => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the request body must be a JSON object (`{...}`)",
                )
                .into())
            }
        }
        serde_json::from_slice(&bytes)
            .map(Self)
            .map_err(|e| ApiError::bad_request(describe(&e)).into())
    }
}

fn describe(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof => format!("the body is not valid JSON: {err}"),
        Category::Data => format!("the body does not match the expected shape: {err}"),
        Category::Io => format!("the body could not be read: {err}"),
    }
}

impl<'a, T: Type + DeserializeOwned> ApiExtractor<'a> for StrictJson<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <Self as Payload>::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: <Self as Payload>::CONTENT_TYPE,
                schema: <Self as Payload>::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        match request.content_type() {
            Some(ct) if Self::check_content_type(ct) => {
                <Self as ParsePayload>::from_request(request, body).await
            }
            Some(ct) => Err(ApiError::unsupported_media_type(format!(
                "`{ct}` is not accepted; send the body as `Content-Type: application/json`"
            ))
            .into()),
            None => Err(ApiError::unsupported_media_type(
                "the request has no Content-Type; send the body as `Content-Type: application/json`",
            )
            .into()),
        }
    }
}
