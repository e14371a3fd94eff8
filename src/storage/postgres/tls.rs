//! TLS for every PostgreSQL connection, as DATABASE_URL asks, through one
//! connector: the pool's connections and those of their own (leader lock,
//! maintenance lock, rebuild stages), in the server and in every command.
//!
//! `sslmode` and `sslrootcert` mean what libpq makes them mean:
//! - `disable`: no TLS; `allow`, `prefer`: TLS when the server offers it;
//! - `require`: TLS, the certificate unchecked (checked against
//!   `sslrootcert` when one is given, as libpq does);
//! - `verify-ca`: the certificate must chain to `sslrootcert` (else the
//!   system's roots); `verify-full`: and name the host.
//!
//! `sslcert` and `sslkey` give a client certificate. tokio-postgres knows
//! only `disable`, `prefer` and `require` and no file options, so the URL is
//! rewritten for it and the rest goes into the rustls configuration.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// What the URL asks of TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRequest {
    /// libpq's `sslmode`, as given (None: not given).
    pub mode: Option<String>,
    pub root_cert: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

/// Takes the TLS options out of `url` (tokio-postgres refuses them) and says
/// what they ask; the URL that is left carries the `sslmode` tokio-postgres
/// knows.
pub fn split_url(url: &str) -> anyhow::Result<(String, TlsRequest)> {
    let mut parsed =
        url::Url::parse(url).map_err(|e| anyhow::anyhow!("DATABASE_URL is not a URL ({e})"))?;
    let mut request = TlsRequest {
        mode: None,
        root_cert: None,
        client_cert: None,
        client_key: None,
    };
    let mut kept = Vec::new();
    for (key, value) in parsed.query_pairs() {
        match key.as_ref() {
            "sslmode" => request.mode = Some(value.into_owned()),
            "sslrootcert" => request.root_cert = Some(value.into_owned()),
            "sslcert" => request.client_cert = Some(value.into_owned()),
            "sslkey" => request.client_key = Some(value.into_owned()),
            _ => kept.push((key.into_owned(), value.into_owned())),
        }
    }
    let tokio_mode = match request.mode.as_deref() {
        None => None,
        Some("disable") => Some("disable"),
        Some("allow" | "prefer") => Some("prefer"),
        Some("require" | "verify-ca" | "verify-full") => Some("require"),
        Some(other) => anyhow::bail!(
            "DATABASE_URL's sslmode `{other}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
        ),
    };
    if let Some(mode) = tokio_mode {
        kept.push(("sslmode".into(), mode.into()));
    }
    // Percent-encoded, not form-encoded: tokio-postgres reads `+` as a plus.
    let query: Vec<String> = kept
        .iter()
        .map(|(k, v)| format!("{}={}", percent(k), percent(v)))
        .collect();
    parsed.set_query((!query.is_empty()).then(|| query.join("&")).as_deref());
    Ok((parsed.to_string(), request))
}

/// `s` with everything but unreserved characters percent-encoded.
fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The connector for what `request` asks.
pub fn connector(request: &TlsRequest) -> anyhow::Result<MakeRustlsConnect> {
    use anyhow::Context;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let verify = match request.mode.as_deref() {
        Some("verify-ca") => Some(false),
        Some("verify-full") => Some(true),
        // libpq checks a certificate against a root it was given, even for require.
        _ if request.root_cert.is_some() => Some(false),
        _ => None,
    };
    let builder = match verify {
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider))),
        Some(check_name) => {
            let roots = roots(request.root_cert.as_deref())?;
            let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .context("building the certificate verifier")?;
            if check_name {
                builder.with_webpki_verifier(chain)
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(chain)))
            }
        }
    };
    let config = match (&request.client_cert, &request.client_key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("reading sslcert `{cert}`"))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("reading sslcert `{cert}`"))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading sslkey `{key}`"))?;
            builder
                .with_client_auth_cert(certs, key)
                .context("the client certificate and key do not go together")?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => anyhow::bail!("DATABASE_URL gives one of sslcert and sslkey without the other"),
    };
    Ok(MakeRustlsConnect::new(config))
}

/// The roots a certificate must chain to: `sslrootcert`, else the system's.
fn roots(file: Option<&str>) -> anyhow::Result<RootCertStore> {
    use anyhow::Context;
    let mut roots = RootCertStore::empty();
    match file {
        Some(file) => {
            for cert in CertificateDer::pem_file_iter(file)
                .with_context(|| format!("reading sslrootcert `{file}`"))?
            {
                roots
                    .add(cert.with_context(|| format!("reading sslrootcert `{file}`"))?)
                    .with_context(|| {
                        format!("sslrootcert `{file}` holds a certificate rustls refuses")
                    })?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    Ok(roots)
}

/// `require` without a root: encrypted, the server's certificate unchecked
/// (libpq's meaning); the handshake's signatures still are.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must hold, whatever name the certificate gives.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_keeps_what_tokio_postgres_reads_and_the_tls_options_are_taken_out() {
        let (url, request) = split_url(
            "postgres://app@db:5432/t?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://app@db:5432/t?application_name=x&sslmode=require"
        );
        assert_eq!(request.mode.as_deref(), Some("verify-full"));
        assert_eq!(request.root_cert.as_deref(), Some("/etc/ca.pem"));
        let (url, request) = split_url("postgres://app@db/t").unwrap();
        assert_eq!(url, "postgres://app@db/t");
        assert_eq!(request.mode, None);
        assert!(split_url("postgres://app@db/t?sslmode=sometimes").is_err());
        let (url, _) = split_url("postgres://app@db/t?options=-c%20a%3D1&sslmode=disable").unwrap();
        assert_eq!(
            url,
            "postgres://app@db/t?options=-c%20a%3D1&sslmode=disable"
        );
        assert!(connector(&request).is_ok());
    }
}
