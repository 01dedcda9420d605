//! Who is connecting: API keys and JWTs.
//!
//! A socket credential is the publishable key (role `anon`), the secret key
//! (role `service_role`), or an HS256/384/512 JWT signed with our secret that
//! has a `role` and a future `exp` (protocol.md §1.4).

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
        }
    }
}

pub struct Auth {
    keys: Keys,
    decoding: DecodingKey,
    validation: Validation,
}

impl Auth {
    pub fn new(keys: Keys) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Auth {
            decoding: DecodingKey::from_secret(keys.jwt_secret.as_bytes()),
            keys,
            validation,
        }
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
        let data = jsonwebtoken::decode::<Value>(token, &self.decoding, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired {
                    seconds_ago: self.expired_for(token),
                },
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::MissingRequiredClaim(_) => AuthError::MissingClaims,
                _ => AuthError::Malformed,
            },
        )?;
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

    /// For the "expired N seconds ago" message; only called once the signature is known good.
    fn expired_for(&self, token: &str) -> u64 {
        let mut v = self.validation.clone();
        v.validate_exp = false;
        let exp = jsonwebtoken::decode::<Value>(token, &self.decoding, &v)
            .ok()
            .and_then(|d| d.claims.get("exp").and_then(Value::as_u64))
            .unwrap_or(0);
        unix_now().saturating_sub(exp)
    }
}

/// Compare secrets without leaking, through timing, how long a prefix matched.
fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
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
