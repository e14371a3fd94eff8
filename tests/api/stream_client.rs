//! A WebSocket subscriber for tests.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::TestApp;

pub struct Subscriber {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What the server sent last: a JSON message or the close frame.
#[derive(Debug)]
pub enum Frame {
    Json(Value),
    Closed(Option<(u16, String)>),
}

impl Subscriber {
    /// Connects to `/v1/stream?{query}`.
    pub async fn connect(app: &TestApp, query: &str) -> Self {
        let url = format!("ws://{}/v1/stream?{query}", app.addr);
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("the stream accepts the connection");
        Self { ws }
    }

    /// A connection made elsewhere (with headers of the test's own).
    pub fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        Self { ws }
    }

    /// Connects with a small receive buffer, so that not reading soon pushes
    /// back on the server.
    pub async fn connect_small(app: &TestApp, query: &str) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.set_recv_buffer_size(4096).expect("a small buffer");
        let stream = socket.connect(app.addr).await.expect("connected");
        let url = format!("ws://{}/v1/stream?{query}", app.addr);
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .expect("the stream accepts the connection");
        Self { ws }
    }

    /// The next frame, skipping pings and pongs; panics after 15 s of nothing.
    pub async fn frame(&mut self) -> Frame {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(15), self.ws.next())
                .await
                .expect("a message within 15 s");
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Frame::Json(serde_json::from_str(&text).expect("JSON messages"))
                }
                Some(Ok(Message::Close(frame))) => {
                    return Frame::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Frame::Closed(None),
            }
        }
    }

    /// The next JSON message; panics on a close.
    pub async fn next(&mut self) -> Value {
        match self.frame().await {
            Frame::Json(v) => v,
            Frame::Closed(c) => panic!("the stream closed: {c:?}"),
        }
    }

    /// Waits for a message of `kind` (`subscribed`, `resync`, ...), skipping updates.
    pub async fn expect(&mut self, kind: &str) -> Value {
        loop {
            let m = self.next().await;
            if m["type"] == kind {
                return m;
            }
            assert_eq!(m["type"], "update", "expected {kind}, got {m}");
        }
    }

    /// The next `update` message.
    pub async fn update(&mut self) -> Value {
        let m = self.next().await;
        assert_eq!(m["type"], "update", "{m}");
        m
    }

    /// Updates until `done` says the collection is complete.
    pub async fn updates_until(&mut self, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
        let mut got = Vec::new();
        while !done(&got) {
            got.push(self.update().await);
        }
        got
    }

    pub async fn send(&mut self, message: Value) {
        self.ws
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("sent");
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Stops reading (and so answering pings) for `d`.
    pub async fn stay_silent(&mut self, d: Duration) {
        tokio::time::sleep(d).await;
    }
}

pub fn is_close(frame: &Frame, code: u16) -> bool {
    matches!(frame, Frame::Closed(Some((c, _))) if *c == code)
}
