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
        parse(&bytes).map(Self).map_err(Into::into)
    }
}

/// Parses a body strictly; an error names the field it happened in.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| refusal(&e))?;
    de.end()
        .map_err(|e| ApiError::bad_request(describe(&e, "")))?;
    Ok(value)
}

/// Values the JSON parser itself cannot hold are refused values (422, naming
/// the field), not malformed requests: a number beyond a double's range, and
/// nesting past the parser's limit (only `data` can nest; it allows 32).
fn refusal(err: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = err.inner();
    let path = err.path().to_string();
    let field = if path == "." { "body".to_owned() } else { path };
    let message = inner.to_string();
    if message.starts_with("number out of range") {
        return ApiError::invalid(
            &field,
            "holds a number beyond what a double can hold (about ±1.8e308); send it as a string",
        );
    }
    if message.starts_with("recursion limit exceeded") {
        let top = field.split(['.', '[']).next().unwrap_or("body");
        return ApiError::invalid(
            top,
            format!(
                "nests deeper than {} levels of objects and arrays",
                crate::domain::values::DATA_MAX_DEPTH
            ),
        );
    }
    ApiError::bad_request(describe(inner, &field))
}

fn describe(err: &serde_json::Error, field: &str) -> String {
    use serde_json::error::Category;
    let at = if field.is_empty() || field == "body" {
        String::new()
    } else {
        format!(" (at `{field}`)")
    };
    match err.classify() {
        Category::Syntax | Category::Eof => format!("the body is not valid JSON: {err}"),
        Category::Data => format!("the body does not match the expected shape{at}: {err}"),
        Category::Io => format!("the body could not be read: {err}"),
    }
}

/// serde reads a struct from a JSON array too, field by field in order
/// (`[null, true]`): a nested object of a strict body is read as an object
/// only. For `#[serde(deserialize_with = ...)]` on fields holding structs.
pub mod object {
    use serde::de::{Deserialize, DeserializeOwned, Deserializer, Error};
    use serde_json::{Map, Value};

    fn from_map<T: DeserializeOwned, E: Error>(map: Map<String, Value>) -> Result<T, E> {
        T::deserialize(Value::Object(map)).map_err(E::custom)
    }

    /// A required object.
    pub fn required<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<T, D::Error> {
        from_map(Map::deserialize(d)?)
    }

    /// An object or null.
    pub fn optional<'de, D: Deserializer<'de>, T: DeserializeOwned>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        Option::<Map<String, Value>>::deserialize(d)?
            .map(from_map)
            .transpose()
    }

    /// An object, null, or absent (with `#[serde(default)]`).
    pub fn maybe<'de, D: Deserializer<'de>, T: DeserializeOwned>(
        d: D,
    ) -> Result<poem_openapi::types::MaybeUndefined<T>, D::Error> {
        use poem_openapi::types::MaybeUndefined;
        Ok(match Option::<Map<String, Value>>::deserialize(d)? {
            None => MaybeUndefined::Null,
            Some(map) => MaybeUndefined::Value(from_map(map)?),
        })
    }

    /// A required map whose values are objects.
    pub fn required_map_of<'de, D: Deserializer<'de>, T: DeserializeOwned>(
        d: D,
    ) -> Result<std::collections::BTreeMap<String, T>, D::Error> {
        map_of(d)?.ok_or_else(|| D::Error::custom("must be an object, not null"))
    }

    /// A map (or null) whose values are objects.
    pub fn map_of<'de, D: Deserializer<'de>, T: DeserializeOwned>(
        d: D,
    ) -> Result<Option<std::collections::BTreeMap<String, T>>, D::Error> {
        let Some(map) = Option::<Map<String, Value>>::deserialize(d)? else {
            return Ok(None);
        };
        map.into_iter()
            .map(|(k, v)| match v {
                Value::Object(m) => from_map(m).map(|t| (k, t)),
                other => Err(D::Error::custom(format!(
                    "`{k}` must be an object, not {other}"
                ))),
            })
            .collect::<Result<_, _>>()
            .map(Some)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        title: String,
        data: Option<serde_json::Value>,
    }

    fn problem(body: &str) -> (u16, String, String) {
        let err = parse::<Body>(body.as_bytes()).unwrap_err();
        let (status, problem) = match err {
            ApiError::BadRequest(p) => (400, p.0),
            ApiError::Unprocessable(p) => (422, p.0),
            other => panic!("{other:?}"),
        };
        let field = problem
            .errors
            .and_then(|e| e.first().map(|f| f.field.clone()))
            .unwrap_or_default();
        (status, field, problem.detail)
    }

    #[test]
    fn numbers_beyond_a_double_are_refused_values_naming_their_field() {
        let (status, field, _) = problem(r#"{"title": "t", "data": {"n": [1, 1e400]}}"#);
        assert_eq!((status, field.as_str()), (422, "data.n[1]"));
    }

    #[test]
    fn nesting_past_the_parser_is_a_refused_value_of_data() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let (status, field, detail) = problem(&format!(r#"{{"title": "t", "data": {deep}}}"#));
        assert_eq!((status, field.as_str()), (422, "data"), "{detail}");
    }

    #[test]
    fn wrong_types_and_unknown_fields_are_malformed_and_say_where() {
        let (status, _, detail) = problem(r#"{"title": 17}"#);
        assert_eq!(status, 400);
        assert!(detail.contains("at `title`"), "{detail}");
        let (status, _, detail) = problem(r#"{"title": "t", "colour": 1}"#);
        assert_eq!(status, 400);
        assert!(detail.contains("unknown field `colour`"), "{detail}");
        let (status, _, detail) = problem(r#"{"title": "t"} trailing"#);
        assert_eq!(status, 400);
        assert!(detail.contains("not valid JSON"), "{detail}");
    }
}
