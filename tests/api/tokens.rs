//! User tokens an application's backend signs with its own key pair
//! (RS256, EdDSA), verified with the public key alone.

use serde_json::json;

use crate::access::{call, ADMIN};
use crate::helpers::{settings, Backend, TestApp};

/// A key pair made with openssl, as PEM texts (private, public).
fn openssl_pair(algorithm: &[&str]) -> Option<(String, String)> {
    let dir = std::env::temp_dir().join(format!("tidings-keys-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).ok()?;
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    let made = std::process::Command::new("openssl")
        .args(["genpkey"])
        .args(algorithm)
        .arg("-out")
        .arg(&private)
        .status()
        .ok()?
        .success()
        && std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .ok()?
            .success();
    let pair = made.then(|| {
        (
            std::fs::read_to_string(&private).unwrap(),
            std::fs::read_to_string(&public).unwrap(),
        )
    });
    let _ = std::fs::remove_dir_all(&dir);
    pair
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_a_backend_signs_with_rs256_or_eddsa_are_verified_with_the_public_key() {
    for (algorithm, args) in [
        (
            jsonwebtoken::Algorithm::RS256,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
        ),
        (
            jsonwebtoken::Algorithm::EdDSA,
            &["-algorithm", "ed25519"][..],
        ),
    ] {
        let Some((private, public)) = openssl_pair(args) else {
            crate::helpers::skipped(
                "tokens::tokens_a_backend_signs…",
                "openssl is not installed",
            );
            return;
        };
        let public_setting = public.clone();
        let app = TestApp::start(Backend::Memory, None, move |db| {
            let mut s = settings(db);
            s.access.api_keys = Some(format!("ops:admin:{ADMIN}"));
            s.access.jwt_public_key = Some(public_setting);
            s
        })
        .await;
        let key = match algorithm {
            jsonwebtoken::Algorithm::RS256 => {
                jsonwebtoken::EncodingKey::from_rsa_pem(private.as_bytes())
            }
            _ => jsonwebtoken::EncodingKey::from_ed_pem(private.as_bytes()),
        }
        .unwrap();
        let claims = json!({"sub": "alice", "exp": chrono::Utc::now().timestamp() + 600});
        let signed =
            jsonwebtoken::encode(&jsonwebtoken::Header::new(algorithm), &claims, &key).unwrap();
        let resp = call(&app, "GET", "/v1/users/alice/inbox", Some(&signed), None).await;
        assert_eq!(resp.status(), 200, "{algorithm:?}");
        // HS256 with the public key as its secret: the classic confusion.
        let confused = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(public.as_bytes()),
        )
        .unwrap();
        let resp = call(&app, "GET", "/v1/users/alice/inbox", Some(&confused), None).await;
        assert_eq!(
            resp.status(),
            401,
            "{algorithm:?}: only the configured algorithm"
        );
        // Without the private key tidings cannot issue tokens itself.
        let resp = call(&app, "POST", "/v1/users/alice/token", Some(ADMIN), None).await;
        assert_eq!(resp.status(), 409);
        app.cleanup().await;
    }
}
