//! `GET /v1/stream`: the WebSocket upgrade for live, resumable updates.
//!
//! Topics and a resume cursor may come in the query string
//! (`?topics=inbox:alice,notification:{id}&cursor=...`) or later in a
//! `subscribe` message. A bad topic in the query is a 422 before the upgrade;
//! past the connection limit the socket is accepted and closed with 1013.
//!
//! Credentials: the upgrade's `Authorization` header where the client can
//! set one; otherwise a first `{"type":"auth","token":"..."}` message (never
//! the query string, which lands in logs). A user token reaches only its
//! user's topics (`inbox:{user}`, `notification:{id}` of its notifications);
//! `analytics` and everyone's topics take a key with `read`.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use poem::web::websocket::{WebSocket, WebSocketConfig, WebSocketStream, WebSocketUpgraded};
use poem::web::RemoteAddr;
use poem::Request;
use poem_openapi::param::Query;
use poem_openapi::OpenApi;

use super::gate::{permits, AuthLater, STREAM};
use super::params::{Text, TopicsRule};
use super::problem::ApiError;
use super::rules;
use super::ApiTags;
use crate::access::Principal;
use crate::domain::Scope;
use crate::streams::credential::{Authenticator, Credential, StreamAccess};
use crate::streams::socket::{self, parse_topics, MAX_TOPICS, MAX_TOPICS_QUERY};
use crate::streams::updates::Topic;
use crate::AppState;

/// Bytes of each socket's read and write buffers: tungstenite's 128 KiB
/// defaults would cost ~134 KiB per idle connection; 4 KiB costs ~7 KiB.
const SOCKET_BUFFER: usize = 4 * 1024;
/// Largest message a client may send (subscribe messages are small).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// What runs on the upgraded connection.
pub type Upgrade = Box<dyn FnOnce(WebSocketStream) -> BoxFuture<'static, ()> + Send + Sync>;

pub struct StreamApi {
    pub state: Arc<AppState>,
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Streams")]
impl StreamApi {
    /// Live updates (WebSocket)
    ///
    /// Upgrades to a WebSocket of live, resumable updates (an HTTP request
    /// without the WebSocket handshake is refused with 400). Topics:
    /// `inbox:{user}` (rows `created`, `changed`, `removed` and the `counts`)
    /// and `notification:{id}` (that row), at most 100; more may be added
    /// with `subscribe` messages. Every message is JSON with a `type`; their
    /// JSON Schema is `openapi/stream-messages.schema.json`. Reconnect with
    /// the `cursor` of the last update received (16 hex digits) to get every
    /// update missed, in order, once.
    #[oai(path = "/stream", method = "get", operation_id = "stream")]
    async fn stream(
        &self,
        ws: WebSocket,
        req: &Request,
        remote: &RemoteAddr,
        /// Comma-separated topics (`inbox:alice,notification:{id}`), at most 100.
        topics: Query<Option<Text<TopicsRule>>>,
        /// A stream cursor (the `cursor` of the last `update` received, 16
        /// hex digits) to resume after; one the stream never issued gets a
        /// `resync` message.
        cursor: Query<Option<String>>,
    ) -> Result<WebSocketUpgraded<Upgrade>, ApiError> {
        let credential = match req.extensions().get::<Principal>() {
            Some(principal) => Some(credential(&self.state, principal.clone())),
            None if req.extensions().get::<AuthLater>().is_some() => None,
            // The gate sets one or the other; without either, fail closed.
            None => {
                return Err(ApiError::forbidden(
                    "no credential was checked for this stream",
                ))
            }
        };
        let access = StreamAccess {
            credential,
            authenticator: Arc::new(TokenAuthenticator {
                state: self.state.clone(),
            }),
        };
        upgrade(
            &self.state,
            ws,
            remote,
            topics.0.map(|t| t.0),
            cursor.0,
            access,
        )
        .await
    }
}

/// A principal as a stream connection's credential.
struct PrincipalCredential {
    principal: Principal,
    state: Arc<AppState>,
}

fn credential(state: &Arc<AppState>, principal: Principal) -> Arc<dyn Credential> {
    Arc::new(PrincipalCredential {
        principal,
        state: state.clone(),
    })
}

#[async_trait::async_trait]
impl Credential for PrincipalCredential {
    async fn refuses(&self, topics: &[String]) -> Option<String> {
        if self.principal.has(Scope::Read) {
            return None;
        }
        let Some(token) = self.principal.user() else {
            return Some("only a key with `read` or a user token may subscribe".into());
        };
        for name in topics {
            let mine = match Topic::parse(name) {
                Ok(Topic::Inbox(user) | Topic::Batches(user)) => user == token.user,
                Ok(Topic::Notification(id)) => match self.state.inbox.get(id).await {
                    Ok(Some(row)) => row
                        .state
                        .content
                        .as_ref()
                        .is_some_and(|c| c.recipient == token.user),
                    _ => false,
                },
                Ok(Topic::Analytics | Topic::Experiments(_)) | Err(_) => false,
            };
            if !mine {
                return Some(format!(
                    "`{name}` is not a topic of user `{}`: a user token reaches only `inbox:{}`, `batches:{}` and the `notification:{{id}}` of its own notifications",
                    token.user.as_str(),
                    token.user.as_str(),
                    token.user.as_str()
                ));
            }
        }
        None
    }

    fn expires_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.principal.user().map(|t| t.expires_at)
    }

    fn who(&self) -> String {
        self.principal.actor()
    }

    fn holds(&self) -> bool {
        match &self.principal {
            // Open until the deployment starts checking credentials.
            Principal::Open => !self.state.access.enforced(),
            Principal::Key(key) => self.state.access.keys.in_force(&key.id),
            Principal::User(_) | Principal::Nobody => true,
        }
    }

    async fn admits_message(&self) -> bool {
        self.state
            .rates
            .check(&self.principal)
            .await
            .is_none_or(|v| v.retry_after.is_none())
    }
}

/// Checks an `auth` message's token as the gate checks a header.
struct TokenAuthenticator {
    state: Arc<AppState>,
}

#[async_trait::async_trait]
impl Authenticator for TokenAuthenticator {
    async fn authenticate(&self, token: &str) -> Result<Arc<dyn Credential>, String> {
        let principal = self
            .state
            .access
            .authenticate(Some(token))
            .map_err(|e| e.to_string())?;
        let rule = rules::rule(STREAM).ok_or("the stream has no access rule")?;
        permits(&principal, rule, None)?;
        Ok(credential(&self.state, principal))
    }
}

async fn upgrade(
    state: &Arc<AppState>,
    ws: WebSocket,
    remote: &RemoteAddr,
    topics: Option<String>,
    cursor: Option<String>,
    access: StreamAccess,
) -> Result<WebSocketUpgraded<Upgrade>, ApiError> {
    let topics = match topics.as_deref() {
        None | Some("") => vec![],
        Some(list) if list.len() > MAX_TOPICS_QUERY => {
            return Err(ApiError::invalid(
                "query.topics",
                format!(
                    "is {} bytes long; at most {MAX_TOPICS} topics, {MAX_TOPICS_QUERY} bytes",
                    list.len()
                ),
            ))
        }
        Some(list) => {
            let names: Vec<&str> = list.split(',').collect();
            parse_topics(names.into_iter()).map_err(|e| ApiError::invalid("query.topics", e))?
        }
    };
    if let Some(cursor) = &cursor {
        if topics.is_empty() {
            return Err(ApiError::invalid(
                "query.cursor",
                format!("`{cursor}` needs topics to resume: add `topics=`"),
            ));
        }
    }
    if let Some(credential) = &access.credential {
        if !topics.is_empty() {
            if let Some(why) = credential.refuses(&topics).await {
                return Err(ApiError::forbidden(why));
            }
        }
    }
    let state = state.clone();
    let config = WebSocketConfig::default()
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE));
    let permit = state.streams.permits.clone().try_acquire_owned();
    let address = remote.as_socket_addr().map(|a| a.ip());
    let place = match (&state.streams.per_address, address) {
        (Some(limit), Some(ip)) => Some(limit.try_take(ip).ok_or(limit.max())),
        _ => None,
    };
    let serve: Upgrade = Box::new(move |socket| {
        Box::pin(async move {
            let streams = &state.streams;
            let Ok(_permit) = permit else {
                return socket::refuse(
                    socket,
                    format!(
                        "connection limit ({}) reached; retry later",
                        streams.max_connections
                    ),
                )
                .await;
            };
            let _place = match place {
                Some(Err(max)) => {
                    return socket::refuse(
                        socket,
                        format!("at most {max} stream connections from one address; close one or retry later"),
                    )
                    .await
                }
                other => other,
            };
            socket::serve(
                socket,
                streams.router.clone(),
                streams.log.clone(),
                streams.settings.clone(),
                topics,
                cursor,
                access,
                streams.closing.clone(),
            )
            .await;
        })
    });
    Ok(ws.config(config).on_upgrade(serve))
}
