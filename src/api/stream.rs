//! `GET /v1/stream`: the WebSocket upgrade for live, resumable updates.
//!
//! Topics and a resume cursor may come in the query string
//! (`?topics=inbox:alice,notification:{id}&cursor=...`) or later in a
//! `subscribe` message. A bad topic in the query is a 422 before the upgrade;
//! past the connection limit the socket is accepted and closed with 1013.

use std::sync::Arc;

use poem::web::websocket::{WebSocket, WebSocketConfig};
use poem::web::{Data, Query, RemoteAddr};
use poem::{handler, IntoResponse};
use serde::Deserialize;

use super::problem::ApiError;
use crate::streams::socket::{self, parse_topics, MAX_TOPICS, MAX_TOPICS_QUERY};
use crate::AppState;

/// Bytes of each socket's read and write buffers: tungstenite's 128 KiB
/// defaults would cost ~134 KiB per idle connection; 4 KiB costs ~7 KiB.
const SOCKET_BUFFER: usize = 4 * 1024;
/// Largest message a client may send (subscribe messages are small).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

#[derive(Deserialize)]
pub struct StreamQuery {
    topics: Option<String>,
    cursor: Option<String>,
}

#[handler]
pub async fn stream(
    ws: WebSocket,
    Query(query): Query<StreamQuery>,
    state: Data<&Arc<AppState>>,
    remote: &RemoteAddr,
) -> poem::Result<poem::Response> {
    let topics = match query.topics.as_deref() {
        None | Some("") => vec![],
        Some(list) if list.len() > MAX_TOPICS_QUERY => {
            return Err(ApiError::invalid(
                "query.topics",
                format!(
                    "is {} bytes long; at most {MAX_TOPICS} topics, {MAX_TOPICS_QUERY} bytes",
                    list.len()
                ),
            )
            .into())
        }
        Some(list) => {
            let names: Vec<&str> = list.split(',').collect();
            parse_topics(names.into_iter()).map_err(|e| ApiError::invalid("query.topics", e))?
        }
    };
    if let Some(cursor) = &query.cursor {
        if topics.is_empty() {
            return Err(ApiError::invalid(
                "query.cursor",
                format!("`{cursor}` needs topics to resume: add `topics=`"),
            )
            .into());
        }
    }
    let state = state.0.clone();
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
    Ok(ws
        .config(config)
        .on_upgrade(move |socket| async move {
            let streams = &state.streams;
            let Ok(_permit) = permit else {
                return socket::refuse(
                    socket,
                    format!("connection limit ({}) reached; retry later", streams.max_connections),
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
                query.cursor,
                streams.closing.clone(),
            )
            .await;
        })
        .into_response())
}
