//! Who is connecting: API keys and JWTs.
//!
//! A socket credential is the publishable key (role `anon`), the secret key
//! (role `service_role`), or a JWT that has a `role` and a future `exp`
//! (protocol.md §1.4): HS256/384/512 signed with our secret, or RS256/ES256/
//! EdDSA (and the other asymmetric algorithms) verified with a key of the
//! configured JWKS, chosen by `kid`. Optional `iss` / `aud` checks.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::config::Keys;

/// An accepted credential.
#[derive(Debug, Clone, PartialEq)]
pub struct Credential {
    pub role: String,
    /// The JWT's claims; `None` for API keys.
    pub claims: Option<Value>,
}

impl Credential {
    /// Unix seconds when it stops being valid; API keys never do.
    pub fn expires_at(&self) -> Option<u64> {
        self.claims.as_ref()?.get("exp")?.as_u64()
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why a credential was refused. The texts are rt's, clients and scripts match them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("API key is missing")]
    Missing,
    #[error("Token has expired")]
    Expired { seconds_ago: u64 },
    #[error("Fields `role` and `exp` are required in JWT")]
    MissingClaims,
    #[error("The token provided is not a valid JWT")]
    Malformed,
    #[error("Failed to validate JWT signature")]
    BadSignature,
    #[error("Invalid JWT claim: {0}")]
    InvalidClaim(&'static str),
}

impl AuthError {
    /// A short stable name, for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Expired { .. } => "expired",
            AuthError::MissingClaims => "missing_claims",
            AuthError::Malformed => "malformed",
            AuthError::BadSignature => "bad_signature",
            AuthError::InvalidClaim(_) => "invalid_claim",
        }
    }

    /// The `system` message text when a channel's token fails (protocol.md §3.6).
    pub fn system_message(&self) -> String {
        match self {
            AuthError::Expired { seconds_ago } => {
                format!("Token has expired {seconds_ago} seconds ago")
            }
            other => other.to_string(),
        }
    }

    /// The join error `reason` for the same failure (protocol.md §3.3).
    pub fn join_reason(&self) -> String {
        match self {
            AuthError::Missing | AuthError::Malformed => format!("MalformedJWT: {self}"),
            AuthError::Expired { seconds_ago } => {
                format!("InvalidJWTToken: Token has expired {seconds_ago} seconds ago")
            }
            AuthError::MissingClaims => format!("InvalidJWTToken: {self}"),
            AuthError::BadSignature => format!("JwtSignatureError: {self}"),
            AuthError::InvalidClaim(_) => format!("InvalidJWTToken: {self}"),
        }
    }
}

/// Extra JWT checks and asymmetric keys.
#[derive(Debug, Clone, Default)]
pub struct JwtOptions {
    /// Keys for RS*/PS*/ES*/EdDSA tokens, looked up by `kid`.
    pub jwks: Option<JwkSet>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud` (one of), when set.
    pub audience: Option<String>,
}

pub struct Auth {
    keys: Keys,
    decoding: DecodingKey,
    validation: Validation,
    jwks: Option<JwkSet>,
}

const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

impl Auth {
    pub fn new(keys: Keys) -> Self {
        Auth::with_options(keys, JwtOptions::default())
    }

    pub fn with_options(keys: Keys, options: JwtOptions) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = HMAC.to_vec();
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(iss) = &options.issuer {
            validation.set_issuer(&[iss]);
        }
        if let Some(aud) = &options.audience {
            validation.set_audience(&[aud]);
        }
        Auth {
            decoding: DecodingKey::from_secret(keys.jwt_secret.as_bytes()),
            keys,
            validation,
            jwks: options.jwks,
        }
    }

    /// The key and validation for this token's algorithm (and `kid`).
    fn key_for(&self, token: &str) -> Result<(DecodingKey, Validation), AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if HMAC.contains(&header.alg) {
            return Ok((self.decoding.clone(), self.validation.clone()));
        }
        let jwks = self.jwks.as_ref().ok_or(AuthError::BadSignature)?;
        let jwk = match &header.kid {
            Some(kid) => jwks.find(kid),
            // No kid: acceptable only when there is one key to try.
            None if jwks.keys.len() == 1 => jwks.keys.first(),
            None => None,
        }
        .ok_or(AuthError::BadSignature)?;
        let key = DecodingKey::from_jwk(jwk).map_err(|_| AuthError::BadSignature)?;
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        Ok((key, validation))
    }

    /// Check the credential a socket presented (`x-api-key` or `apikey`).
    pub fn verify_socket(&self, presented: Option<&str>) -> Result<Credential, AuthError> {
        let key = presented
            .filter(|k| !k.is_empty())
            .ok_or(AuthError::Missing)?;
        if constant_time_eq(key, &self.keys.publishable) {
            return Ok(Credential {
                role: "anon".into(),
                claims: None,
            });
        }
        if constant_time_eq(key, &self.keys.secret) {
            return Ok(Credential {
                role: "service_role".into(),
                claims: None,
            });
        }
        self.verify_jwt(key)
    }

    /// Verify a JWT: signature, a future `exp`, and a `role`.
    pub fn verify_jwt(&self, token: &str) -> Result<Credential, AuthError> {
        let (key, validation) = self.key_for(token)?;
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::ExpiredSignature => AuthError::Expired {
                seconds_ago: expired_for(token, &key, &validation),
            },
            ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => AuthError::BadSignature,
            ErrorKind::MissingRequiredClaim(_) => AuthError::MissingClaims,
            ErrorKind::InvalidIssuer => AuthError::InvalidClaim("iss"),
            ErrorKind::InvalidAudience => AuthError::InvalidClaim("aud"),
            _ => AuthError::Malformed,
        })?;
        let role = data
            .claims
            .get("role")
            .and_then(Value::as_str)
            .ok_or(AuthError::MissingClaims)?
            .to_owned();
        Ok(Credential {
            role,
            claims: Some(data.claims),
        })
    }
}

/// For the "expired N seconds ago" message; only called once the signature is known good.
fn expired_for(token: &str, key: &DecodingKey, validation: &Validation) -> u64 {
    let mut v = validation.clone();
    v.validate_exp = false;
    let exp = jsonwebtoken::decode::<Value>(token, key, &v)
        .ok()
        .and_then(|d| d.claims.get("exp").and_then(Value::as_u64))
        .unwrap_or(0);
    unix_now().saturating_sub(exp)
}

/// Compare secrets without leaking, through timing, how long a prefix matched.
fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::Algorithm;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn auth() -> Auth {
        Auth::new(Keys {
            publishable: "sb_publishable_p".into(),
            secret: "sb_secret_s".into(),
            jwt_secret: "jwt-secret".into(),
        })
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn jwt(claims: Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn keys_map_to_roles() {
        let a = auth();
        assert_eq!(
            a.verify_socket(Some("sb_publishable_p")).unwrap().role,
            "anon"
        );
        assert_eq!(
            a.verify_socket(Some("sb_secret_s")).unwrap().role,
            "service_role"
        );
        assert_eq!(a.verify_socket(None), Err(AuthError::Missing));
        assert_eq!(a.verify_socket(Some("")), Err(AuthError::Missing));
        assert_eq!(
            a.verify_socket(Some("sb_publishable_x")),
            Err(AuthError::Malformed)
        );
    }

    fn jwks_auth(issuer: Option<&str>) -> Auth {
        let jwks = serde_json::from_str(include_str!("../tests/fixtures/jwks.json")).unwrap();
        Auth::with_options(
            Keys {
                publishable: "sb_publishable_p".into(),
                secret: "sb_secret_s".into(),
                jwt_secret: "jwt-secret".into(),
            },
            JwtOptions {
                jwks: Some(jwks),
                issuer: issuer.map(str::to_owned),
                audience: None,
            },
        )
    }

    fn signed(alg: Algorithm, kid: Option<&str>, claims: Value) -> String {
        let key = match alg {
            Algorithm::RS256 => {
                EncodingKey::from_rsa_pem(include_bytes!("../tests/fixtures/rsa.pem"))
            }
            Algorithm::ES256 => {
                EncodingKey::from_ec_pem(include_bytes!("../tests/fixtures/ec.pem"))
            }
            _ => EncodingKey::from_ed_pem(include_bytes!("../tests/fixtures/ed25519.pem")),
        }
        .unwrap();
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        encode(&header, &claims, &key).unwrap()
    }

    #[test]
    fn asymmetric_tokens_verify_with_the_jwks_key_of_their_kid() {
        let a = jwks_auth(None);
        let claims = json!({"role": "authenticated", "exp": now() + 60});
        for (alg, kid) in [
            (Algorithm::RS256, "rsa-1"),
            (Algorithm::ES256, "ec-1"),
            (Algorithm::EdDSA, "ed-1"),
        ] {
            let t = signed(alg, Some(kid), claims.clone());
            assert_eq!(a.verify_jwt(&t).unwrap().role, "authenticated", "{alg:?}");
            // The wrong key for the kid, or an unknown kid: a signature failure.
            let wrong = signed(
                alg,
                Some(if kid == "rsa-1" { "ec-1" } else { "rsa-1" }),
                claims.clone(),
            );
            assert_eq!(
                a.verify_jwt(&wrong),
                Err(AuthError::BadSignature),
                "{alg:?}"
            );
            assert_eq!(
                a.verify_jwt(&signed(alg, Some("nope"), claims.clone())),
                Err(AuthError::BadSignature)
            );
        }
        // Several keys and no kid: refused rather than guessed.
        assert_eq!(
            a.verify_jwt(&signed(Algorithm::RS256, None, claims.clone())),
            Err(AuthError::BadSignature)
        );
        // Without a JWKS, asymmetric tokens cannot verify.
        assert_eq!(
            auth().verify_jwt(&signed(Algorithm::RS256, Some("rsa-1"), claims)),
            Err(AuthError::BadSignature)
        );
        let expired = signed(
            Algorithm::ES256,
            Some("ec-1"),
            json!({"role": "anon", "exp": now() - 5}),
        );
        assert!(matches!(
            a.verify_jwt(&expired),
            Err(AuthError::Expired { .. })
        ));
    }

    #[test]
    fn issuer_is_checked_when_configured() {
        let a = jwks_auth(Some("https://issuer.example"));
        let good = jwt(
            json!({"role": "anon", "exp": now() + 60, "iss": "https://issuer.example"}),
            "jwt-secret",
        );
        assert!(a.verify_jwt(&good).is_ok());
        let other = jwt(
            json!({"role": "anon", "exp": now() + 60, "iss": "https://evil.example"}),
            "jwt-secret",
        );
        assert_eq!(a.verify_jwt(&other), Err(AuthError::InvalidClaim("iss")));
        assert_eq!(
            AuthError::InvalidClaim("iss").join_reason(),
            "InvalidJWTToken: Invalid JWT claim: iss"
        );
    }

    #[test]
    fn jwt_rules() {
        let a = auth();
        let good = jwt(
            json!({"role": "authenticated", "exp": now() + 60, "sub": "u1"}),
            "jwt-secret",
        );
        let cred = a.verify_socket(Some(&good)).unwrap();
        assert_eq!(cred.role, "authenticated");
        assert_eq!(cred.claims.unwrap()["sub"], "u1");

        let expired = jwt(json!({"role": "anon", "exp": now() - 30}), "jwt-secret");
        match a.verify_jwt(&expired) {
            Err(AuthError::Expired { seconds_ago }) => assert!((30..40).contains(&seconds_ago)),
            other => panic!("{other:?}"),
        }
        let no_role = jwt(json!({"exp": now() + 60}), "jwt-secret");
        assert_eq!(a.verify_jwt(&no_role), Err(AuthError::MissingClaims));
        let no_exp = jwt(json!({"role": "anon"}), "jwt-secret");
        assert_eq!(a.verify_jwt(&no_exp), Err(AuthError::MissingClaims));
        let wrong_key = jwt(json!({"role": "anon", "exp": now() + 60}), "other");
        assert_eq!(a.verify_jwt(&wrong_key), Err(AuthError::BadSignature));
        assert_eq!(a.verify_jwt("not.a.jwt"), Err(AuthError::Malformed));
        assert_eq!(
            AuthError::Expired { seconds_ago: 3 }.join_reason(),
            "InvalidJWTToken: Token has expired 3 seconds ago"
        );
    }
}
