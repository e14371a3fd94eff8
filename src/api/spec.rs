//! The OpenAPI document as served, and what poem-openapi cannot say by
//! itself: links between operations (so a stateful tester can walk a
//! notification's lifecycle from its create), the document and the docs as
//! operations of their own, and `Allow` on a 405 from the paths it lists.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use poem::http::{HeaderValue, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::payload::{Html, Json};
use poem_openapi::{ApiResponse, OpenApi};
use serde_json::{json, Value};

use super::ApiTags;

/// The served document and the docs page, set once the service is built
/// (the service describes itself, these operations included).
#[derive(Clone, Default)]
pub struct Published {
    document: Arc<OnceLock<Value>>,
    html: Arc<OnceLock<String>>,
}

impl Published {
    pub fn set(&self, document: Value, html: String) {
        let _ = self.document.set(document);
        let _ = self.html.set(html);
    }
}

pub struct DocsApi {
    pub published: Published,
}

#[derive(ApiResponse)]
pub enum DocumentResponse {
    /// This document (OpenAPI 3.0).
    #[oai(status = 200)]
    Ok(Json<Value>),
}

#[derive(ApiResponse)]
pub enum DocsResponse {
    /// The Swagger UI, with this document.
    #[oai(status = 200)]
    Ok(Html<String>),
}

#[OpenApi(tag = "ApiTags::Operations")]
impl DocsApi {
    /// The OpenAPI document
    #[oai(path = "/openapi.json", method = "get", operation_id = "openapi")]
    async fn document(&self) -> DocumentResponse {
        DocumentResponse::Ok(Json(
            self.published.document.get().cloned().unwrap_or_default(),
        ))
    }

    /// The API playground (Swagger UI)
    #[oai(path = "/docs", method = "get", operation_id = "docs")]
    async fn docs(&self) -> DocsResponse {
        DocsResponse::Ok(Html(self.published.html.get().cloned().unwrap_or_default()))
    }
}

/// Commands on a notification, by operation id, that a create links to.
const NOTIFICATION_OPERATIONS: &[&str] = &[
    "getNotification",
    "notificationEvents",
    "markSeen",
    "markRead",
    "markUnread",
    "click",
    "archive",
    "unarchive",
    "cancel",
    "deliver",
    "deleteNotification",
];

/// The generated document, completed with what poem-openapi cannot say.
pub fn complete(document: Value) -> Value {
    let mut document = with_links(document);
    close_request_bodies(&mut document);
    // Exactly one of the three names who a create is for.
    if let Some(create) = document["components"]["schemas"].get_mut("CreateNotificationRequest") {
        // And its text: `title` and `body`, or a `template` (and only
        // then `template_version` and `variables`).
        create["allOf"] = serde_json::json!([
            {"oneOf": [
                {"required": ["recipient"]},
                {"required": ["recipients"]},
                {"required": ["topic"]},
            ]},
            {"oneOf": [
                {"required": ["title", "body"], "not": {"anyOf": [
                    {"required": ["template"]},
                    {"required": ["template_version"]},
                    {"required": ["variables"]},
                ]}},
                {"required": ["template"], "not": {"anyOf": [
                    {"required": ["title"]},
                    {"required": ["body"]},
                ]}},
            ]},
        ]);
    }
    walk(&mut document, &mut null_in_nullable_enums);
    document
}

/// Request bodies are parsed with unknown fields refused (`StrictJson`),
/// the objects inside them too: their schemas say so.
fn close_request_bodies(document: &mut Value) {
    let mut bodies = BTreeSet::new();
    walk(&mut document["paths"], &mut |v| {
        if let Some(r) = v["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str()
        {
            bodies.insert(r.trim_start_matches("#/components/schemas/").to_owned());
        }
    });
    // And every schema a body's schema refers to, at any depth.
    let mut pending: Vec<String> = bodies.iter().cloned().collect();
    while let Some(name) = pending.pop() {
        let mut inner = Vec::new();
        if let Some(schema) = document["components"]["schemas"].get_mut(&name) {
            walk(schema, &mut |v| {
                if let Some(r) = v["$ref"].as_str() {
                    inner.push(r.trim_start_matches("#/components/schemas/").to_owned());
                }
            });
        }
        for name in inner {
            if bodies.insert(name.clone()) {
                pending.push(name);
            }
        }
    }
    for name in bodies {
        if let Some(schema) = document["components"]["schemas"].get_mut(&name) {
            if schema.get("properties").is_some() {
                schema["additionalProperties"] = Value::Bool(false);
            }
        }
    }
}

/// In OpenAPI 3.0 `nullable` does not widen an `enum`: a null must be listed.
fn null_in_nullable_enums(v: &mut Value) {
    if v["nullable"] == true {
        if let Some(items) = v.get_mut("enum").and_then(Value::as_array_mut) {
            if !items.contains(&Value::Null) {
                items.push(Value::Null);
            }
        }
    }
}

/// Calls `f` on every object in `v`, depth first.
fn walk(v: &mut Value, f: &mut impl FnMut(&mut Value)) {
    match v {
        Value::Object(map) => {
            for child in map.values_mut() {
                walk(child, f);
            }
            f(v);
        }
        Value::Array(items) => items.iter_mut().for_each(|i| walk(i, f)),
        _ => {}
    }
}

/// Adds the links: from a create (and a command's receipt) to everything
/// done with the notification's id; from an inbox page to its first item.
fn with_links(mut document: Value) -> Value {
    let to_notification = |from: &str| -> Value {
        let mut links = serde_json::Map::new();
        for op in NOTIFICATION_OPERATIONS {
            links.insert(
                format!("{}{}", op[..1].to_uppercase(), &op[1..]),
                json!({"operationId": op, "parameters": {"id": from}}),
            );
        }
        Value::Object(links)
    };
    let Some(paths) = document["paths"].as_object_mut() else {
        return document;
    };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for op in item.values_mut() {
            let links = match op["operationId"].as_str() {
                Some("createNotification") => ("201", to_notification("$response.body#/id")),
                Some(id)
                    if NOTIFICATION_OPERATIONS.contains(&id)
                        && id != "getNotification"
                        && id != "notificationEvents" =>
                {
                    ("200", to_notification("$response.body#/id"))
                }
                Some("getInbox") => ("200", to_notification("$response.body#/items/0/id")),
                _ => continue,
            };
            if let Some(response) = op["responses"].get_mut(links.0) {
                response["links"] = links.1;
            }
        }
    }
    document
}

/// Paths and the methods each takes, from the document.
#[derive(Debug, Clone)]
pub struct Methods {
    routes: Vec<(Vec<String>, BTreeSet<String>)>,
}

impl Methods {
    pub fn of(document: &Value) -> Self {
        let routes = document["paths"]
            .as_object()
            .map(|paths| {
                paths
                    .iter()
                    .map(|(path, item)| {
                        let segments = path.split('/').map(str::to_owned).collect();
                        let mut methods: BTreeSet<String> = item
                            .as_object()
                            .map(|ops| ops.keys().map(|m| m.to_ascii_uppercase()).collect())
                            .unwrap_or_default();
                        if methods.contains("GET") {
                            methods.insert("HEAD".into());
                        }
                        (segments, methods)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self { routes }
    }

    /// The methods `path` takes, if it is one of the document's paths.
    pub fn allowed(&self, path: &str) -> Option<String> {
        let segments: Vec<&str> = path.split('/').collect();
        self.routes
            .iter()
            .find(|(route, _)| template_matches(route, &segments, false))
            .map(|(_, methods)| methods.iter().cloned().collect::<Vec<_>>().join(", "))
    }
}

/// Whether a path, split at `/`, is one of a template's (`{name}`
/// segments match anything; an empty one only when `empty_matches`).
pub fn template_matches(template: &[String], segments: &[&str], empty_matches: bool) -> bool {
    template.len() == segments.len()
        && template.iter().zip(segments).all(|(t, s)| {
            (t.starts_with('{') && t.ends_with('}') && (empty_matches || !s.is_empty())) || t == s
        })
}

/// Adds `Allow` to a 405 (RFC 9110 requires it): the methods the path takes.
pub async fn with_allow<E: Endpoint>(
    next: E,
    req: Request,
    methods: Arc<Methods>,
) -> poem::Result<Response> {
    let path = req.uri().path().to_owned();
    let mut resp = match next.call(req).await {
        Ok(resp) => resp.into_response(),
        Err(err) => {
            // Which operation refused it, for the request metrics.
            let operation = err.data::<poem_openapi::OperationId>().copied();
            let mut resp = super::problem::problem_from_error(err).await;
            if let Some(operation) = operation {
                resp.set_data(operation);
            }
            resp
        }
    };
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
        if let Some(allow) = methods
            .allowed(&path)
            .and_then(|m| HeaderValue::from_str(&m).ok())
        {
            resp.headers_mut().insert("allow", allow);
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowed_methods_of_a_path_come_from_its_templates() {
        let methods = Methods::of(&json!({"paths": {
            "/v1/notifications/{id}": {"get": {}, "delete": {}},
            "/v1/notifications/{id}/read": {"post": {}},
        }}));
        assert_eq!(
            methods.allowed("/v1/notifications/abc").as_deref(),
            Some("DELETE, GET, HEAD")
        );
        assert_eq!(
            methods.allowed("/v1/notifications/abc/read").as_deref(),
            Some("POST")
        );
        assert_eq!(methods.allowed("/v1/notifications//read"), None);
        assert_eq!(methods.allowed("/nope"), None);
    }
}
