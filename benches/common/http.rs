//! A lean keep-alive HTTP/1.1 client for the benchmarks (hyper, no pool).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

pub struct Writer {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// `Bearer <credential>`, sent with every request when set.
    authorization: Option<String>,
}

impl Writer {
    pub async fn connect(addr: impl tokio::net::ToSocketAddrs) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Self {
            sender,
            authorization: None,
        }
    }

    /// Sends `Authorization: Bearer <credential>` from now on (not every
    /// bench that shares this client sends one).
    #[allow(dead_code)]
    pub fn with_bearer(mut self, credential: Option<&str>) -> Self {
        self.authorization = credential.map(|c| format!("Bearer {c}"));
        self
    }

    /// POSTs a create; the status and body, or None when the connection failed.
    #[allow(dead_code)] // not every bench that shares this client creates
    pub async fn create(&mut self, body: String) -> Option<(u16, Bytes)> {
        let mut req = hyper::Request::post("/v1/notifications")
            .header("host", "bench")
            .header("content-type", "application/json");
        if let Some(auth) = &self.authorization {
            req = req.header("authorization", auth);
        }
        let req = req.body(Full::new(Bytes::from(body))).expect("request");
        let resp = self.sender.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    }

    /// Any request; the status and body, or None when the connection failed.
    #[allow(dead_code)]
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Option<(u16, Bytes)> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "bench");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        if let Some(auth) = &self.authorization {
            req = req.header("authorization", auth);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("request");
        let resp = self.sender.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    }
}
