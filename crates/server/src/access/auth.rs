//! Who is connecting: API keys and JWTs.
//!
//! A socket credential is the publishable key (role `anon`), the secret key
//! (role `service_role`), or a JWT that has a `role` and a future `exp`
//! (docs/protocol.md §1.3): HS256/384/512 signed with our secret, or RS256/ES256/
//! EdDSA (and the other asymmetric algorithms) verified with a key of the
//! configured JWKS, chosen by `kid`.
//!
//! jsonwebtoken checks only the signature and algorithm; the claims are
//! checked here, every rule explicit (`check_claims`): `role` a string;
//! `exp` a number of seconds in `0..=MAX_NUMERIC_DATE` and in the future;
//! `nbf`, when present, such a number and not in the future; `sub`, when
//! present, a string; `iss` and `aud` required and matching whenever
//! configured. No leeway. (jsonwebtoken's own parse of `exp`, `nbf` and `sub`
//! fails on an array or object there: such a token is refused as malformed.)

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::settings::{JwtOptions, Keys};

/// An accepted credential.
#[derive(Debug, Clone, PartialEq)]
pub struct Credential {
    pub role: String,
    /// The JWT's claims; `None` for API keys.
    pub claims: Option<Value>,
}

impl Credential {
    /// Unix seconds when it stops being valid; API keys never do. A
    /// fractional `exp` counts from its whole second (expiring early, not late).
    pub fn expires_at(&self) -> Option<u64> {
        numeric_date(self.claims.as_ref()?.get("exp")?, Rounding::Down)
    }
}

/// The latest `exp` / `nbf` accepted: 9999-12-31T23:59:59Z. Far beyond any
/// real token, and far below where time arithmetic on it could overflow
/// (an `exp` near 2^63 used to panic the socket's task).
pub const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

#[derive(Clone, Copy)]
enum Rounding {
    Down,
    Up,
}

/// A JWT NumericDate (RFC 7519 §2): a JSON number of seconds, integer or
/// not, here also within `0..=MAX_NUMERIC_DATE`. `None` for anything else.
fn numeric_date(value: &Value, rounding: Rounding) -> Option<u64> {
    let n = value.as_number()?;
    let seconds = match n.as_u64() {
        Some(exact) => exact,
        None => {
            let f = n.as_f64()?;
            if !(0.0..=MAX_NUMERIC_DATE as f64).contains(&f) {
                return None;
            }
            match rounding {
                Rounding::Down => f.floor() as u64,
                Rounding::Up => f.ceil() as u64,
            }
        }
    };
    (seconds <= MAX_NUMERIC_DATE).then_some(seconds)
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
    /// A claim this server is configured to check (`iss`, `aud`) is absent.
    #[error("Missing JWT claim: {0}")]
    MissingClaim(&'static str),
    /// `nbf` is still in the future.
    #[error("Token is not valid yet")]
    NotYetValid,
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
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::NotYetValid => "not_yet_valid",
        }
    }

    /// The `system` message text when a channel's token fails (docs/protocol.md §3.6).
    pub fn system_message(&self) -> String {
        match self {
            AuthError::Expired { seconds_ago } => {
                format!("Token has expired {seconds_ago} seconds ago")
            }
            other => other.to_string(),
        }
    }

    /// The join error `reason` for the same failure (docs/protocol.md §3.3).
    pub fn join_reason(&self) -> String {
        match self {
            AuthError::Missing | AuthError::Malformed => format!("MalformedJWT: {self}"),
            AuthError::Expired { seconds_ago } => {
                format!("InvalidJWTToken: Token has expired {seconds_ago} seconds ago")
            }
            AuthError::MissingClaims => format!("InvalidJWTToken: {self}"),
            AuthError::BadSignature => format!("JwtSignatureError: {self}"),
            AuthError::InvalidClaim(_) | AuthError::MissingClaim(_) | AuthError::NotYetValid => {
                format!("InvalidJWTToken: {self}")
            }
        }
    }
}

pub struct Auth {
    keys: Keys,
    decoding: DecodingKey,
    validation: Validation,
    jwks: Option<JwkSet>,
    issuer: Option<String>,
    audience: Option<String>,
}

const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

impl Auth {
    pub fn new(keys: Keys) -> Self {
        Auth::with_options(keys, JwtOptions::default())
    }

    pub fn with_options(keys: Keys, options: JwtOptions) -> Self {
        // Signature and algorithm only: `check_claims` does the rest.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = HMAC.to_vec();
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        Auth {
            decoding: DecodingKey::from_secret(keys.jwt_secret.as_bytes()),
            keys,
            validation,
            jwks: options.jwks,
            issuer: options.issuer,
            audience: options.audience,
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

    /// Verify a JWT: its signature, then its claims (`check_claims`).
    pub fn verify_jwt(&self, token: &str) -> Result<Credential, AuthError> {
        let (key, validation) = self.key_for(token)?;
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => AuthError::BadSignature,
            _ => AuthError::Malformed,
        })?;
        let role = check_claims(
            &data.claims,
            self.issuer.as_deref(),
            self.audience.as_deref(),
            unix_now(),
        )?;
        Ok(Credential {
            role,
            claims: Some(data.claims),
        })
    }
}

/// The claim rules of a signed token at `now` (Unix seconds); its role when
/// they all hold. Any JSON in any claim is refused cleanly, never a panic.
fn check_claims(
    claims: &Value,
    issuer: Option<&str>,
    audience: Option<&str>,
    now: u64,
) -> Result<String, AuthError> {
    let claims = claims.as_object().ok_or(AuthError::Malformed)?;
    let (Some(role), Some(exp)) = (
        claims.get("role").and_then(Value::as_str),
        claims.get("exp"),
    ) else {
        return Err(AuthError::MissingClaims);
    };
    let exp = numeric_date(exp, Rounding::Down).ok_or(AuthError::InvalidClaim("exp"))?;
    // A fractional `nbf` counts from its next whole second (valid late, not early).
    let nbf = match claims.get("nbf") {
        Some(nbf) => Some(numeric_date(nbf, Rounding::Up).ok_or(AuthError::InvalidClaim("nbf"))?),
        None => None,
    };
    if claims.get("sub").is_some_and(|sub| !sub.is_string()) {
        return Err(AuthError::InvalidClaim("sub"));
    }
    if let Some(wanted) = issuer {
        match claims.get("iss") {
            None => return Err(AuthError::MissingClaim("iss")),
            Some(Value::String(iss)) if iss == wanted => {}
            Some(_) => return Err(AuthError::InvalidClaim("iss")),
        }
    }
    if let Some(wanted) = audience {
        // RFC 7519 §4.1.3: one string, or an array of strings with ours among them.
        let ours = |v: &Value| v.as_str() == Some(wanted);
        match claims.get("aud") {
            None => return Err(AuthError::MissingClaim("aud")),
            Some(aud) if ours(aud) => {}
            Some(Value::Array(auds)) if auds.iter().any(ours) => {}
            Some(_) => return Err(AuthError::InvalidClaim("aud")),
        }
    }
    if exp <= now {
        return Err(AuthError::Expired {
            seconds_ago: now - exp,
        });
    }
    if nbf.is_some_and(|nbf| nbf > now) {
        return Err(AuthError::NotYetValid);
    }
    Ok(role.to_owned())
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
        jwks_auth_with(issuer, None)
    }

    fn jwks_auth_with(issuer: Option<&str>, audience: Option<&str>) -> Auth {
        let jwks = serde_json::from_str(include_str!("../../tests/fixtures/jwks.json")).unwrap();
        Auth::with_options(
            Keys {
                publishable: "sb_publishable_p".into(),
                secret: "sb_secret_s".into(),
                jwt_secret: "jwt-secret".into(),
            },
            JwtOptions {
                jwks: Some(jwks),
                issuer: issuer.map(str::to_owned),
                audience: audience.map(str::to_owned),
            },
        )
    }

    fn signed(alg: Algorithm, kid: Option<&str>, claims: Value) -> String {
        let key = match alg {
            Algorithm::RS256 => {
                EncodingKey::from_rsa_pem(include_bytes!("../../tests/fixtures/rsa.pem"))
            }
            Algorithm::ES256 => {
                EncodingKey::from_ec_pem(include_bytes!("../../tests/fixtures/ec.pem"))
            }
            _ => EncodingKey::from_ed_pem(include_bytes!("../../tests/fixtures/ed25519.pem")),
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
        // Finding #14.5: a token without `iss` used to pass the check.
        let none = jwt(json!({"role": "anon", "exp": now() + 60}), "jwt-secret");
        assert_eq!(a.verify_jwt(&none), Err(AuthError::MissingClaim("iss")));
        assert_eq!(
            AuthError::MissingClaim("iss").join_reason(),
            "InvalidJWTToken: Missing JWT claim: iss"
        );
        // Only a string is an issuer.
        let listed = jwt(
            json!({"role": "anon", "exp": now() + 60, "iss": ["https://issuer.example"]}),
            "jwt-secret",
        );
        assert_eq!(a.verify_jwt(&listed), Err(AuthError::InvalidClaim("iss")));
        // Unconfigured, `iss` is not looked at.
        assert!(auth().verify_jwt(&other).is_ok());
    }

    /// Finding #14.5: `--jwt-audience` was never checked.
    #[test]
    fn audience_is_required_when_configured() {
        let a = jwks_auth_with(None, Some("roster"));
        let with = |aud: Value| {
            a.verify_jwt(&jwt(
                json!({"role": "authenticated", "exp": now() + 60, "aud": aud}),
                "jwt-secret",
            ))
        };
        assert!(with(json!("roster")).is_ok());
        assert!(with(json!(["other", "roster"])).is_ok());
        assert_eq!(with(json!("other")), Err(AuthError::InvalidClaim("aud")));
        assert_eq!(with(json!(["other"])), Err(AuthError::InvalidClaim("aud")));
        assert_eq!(with(json!([])), Err(AuthError::InvalidClaim("aud")));
        assert_eq!(with(json!(7)), Err(AuthError::InvalidClaim("aud")));
        let none = jwt(json!({"role": "anon", "exp": now() + 60}), "jwt-secret");
        assert_eq!(a.verify_jwt(&none), Err(AuthError::MissingClaim("aud")));
        // Unconfigured, any `aud` goes (Supabase tokens carry "authenticated").
        let supabase = jwt(
            json!({"role": "anon", "exp": now() + 60, "aud": "authenticated"}),
            "jwt-secret",
        );
        assert!(auth().verify_jwt(&supabase).is_ok());
    }

    /// Finding #14.6: a float `exp` was never enforced, one above 2^63
    /// panicked the socket's task, and a future `nbf` was accepted.
    #[test]
    fn exp_and_nbf_edge_cases() {
        let a = auth();
        let verify = |claims: Value| a.verify_jwt(&jwt(claims, "jwt-secret"));
        let t = now();
        let ok = verify(json!({"role": "anon", "exp": t as f64 + 60.9})).unwrap();
        assert_eq!(
            ok.expires_at(),
            Some(t + 60),
            "a fractional exp rounds down"
        );
        assert!(matches!(
            verify(json!({"role": "anon", "exp": t as f64 - 0.5})),
            Err(AuthError::Expired { .. })
        ));
        assert!(matches!(
            verify(json!({"role": "anon", "exp": t})),
            Err(AuthError::Expired { seconds_ago: 0 })
        ));
        let last = verify(json!({"role": "anon", "exp": MAX_NUMERIC_DATE})).unwrap();
        assert_eq!(last.expires_at(), Some(MAX_NUMERIC_DATE));
        for exp in [
            json!(MAX_NUMERIC_DATE + 1),
            json!(1u64 << 63),
            json!(u64::MAX),
            json!(1e300),
            json!(-1),
            json!(i64::MIN),
            json!(-0.5),
            json!((t + 60).to_string()),
            json!(null),
            json!(true),
        ] {
            assert_eq!(
                verify(json!({"role": "anon", "exp": exp})),
                Err(AuthError::InvalidClaim("exp")),
                "{exp}"
            );
        }
        // jsonwebtoken cannot parse these shapes of `exp`, `nbf` or `sub`: refused too.
        for odd in [json!([t + 60]), json!({"at": t + 60})] {
            for claim in ["exp", "nbf", "sub"] {
                let mut claims = json!({"role": "anon", "exp": t + 60});
                claims[claim] = odd.clone();
                assert_eq!(verify(claims), Err(AuthError::Malformed), "{claim} {odd}");
            }
        }
        let exp = t + 60;
        assert!(verify(json!({"role": "anon", "exp": exp, "nbf": t - 5})).is_ok());
        assert!(verify(json!({"role": "anon", "exp": exp, "nbf": t})).is_ok());
        assert_eq!(
            verify(json!({"role": "anon", "exp": exp, "nbf": t + 30})),
            Err(AuthError::NotYetValid)
        );
        assert_eq!(
            verify(json!({"role": "anon", "exp": exp, "nbf": t as f64 + 0.5})),
            Err(AuthError::NotYetValid),
            "a fractional nbf rounds up"
        );
        for nbf in [json!("0"), json!(-1), json!(u64::MAX), json!(null)] {
            assert_eq!(
                verify(json!({"role": "anon", "exp": exp, "nbf": nbf})),
                Err(AuthError::InvalidClaim("nbf")),
                "{nbf}"
            );
        }
        // `iat` is informational: any value goes.
        assert!(verify(json!({"role": "anon", "exp": exp, "iat": "yesterday"})).is_ok());
        // A subject is a string, when there is one (policies match it literally).
        assert!(verify(json!({"role": "anon", "exp": exp, "sub": "u1"})).is_ok());
        assert_eq!(
            verify(json!({"role": "anon", "exp": exp, "sub": 7})),
            Err(AuthError::InvalidClaim("sub"))
        );
        // A role must be a string; claims must be an object.
        assert_eq!(
            verify(json!({"role": 1, "exp": exp})),
            Err(AuthError::MissingClaims)
        );
        assert_eq!(verify(json!([1, 2])), Err(AuthError::Malformed));
        assert_eq!(
            AuthError::NotYetValid.join_reason(),
            "InvalidJWTToken: Token is not valid yet"
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

    /// Claim values of every JSON type, near and far from the rules' edges.
    fn claim_value(now: u64) -> impl proptest::strategy::Strategy<Value = Option<Value>> {
        use proptest::prelude::*;
        let near = -200i64..200;
        prop_oneof![
            2 => Just(None),
            1 => Just(Some(Value::Null)),
            1 => any::<bool>().prop_map(|b| Some(json!(b))),
            // Integers and fractions around now (offsets of at least 5 s or
            // exactly 0, so the clock moving during a case cannot flip it).
            3 => near.clone().prop_filter("clear of the edge", |o| *o == 0 || o.abs() >= 5)
                .prop_map(move |o| Some(json!(now as i64 + o))),
            2 => (near, 0.0f64..1.0).prop_filter("clear of the edge", |(o, _)| o.abs() >= 5)
                .prop_map(move |(o, f)| Some(json!(now as f64 + o as f64 + f))),
            2 => prop_oneof![
                Just(json!(0)),
                Just(json!(-1)),
                Just(json!(i64::MIN)),
                Just(json!(1u64 << 63)),
                Just(json!(u64::MAX)),
                Just(json!(MAX_NUMERIC_DATE)),
                Just(json!(MAX_NUMERIC_DATE + 1)),
                Just(json!(1e300)),
                Just(json!(-1e300)),
                Just(json!(f64::MIN_POSITIVE)),
            ].prop_map(Some),
            2 => prop_oneof![
                Just("iss-ok".to_owned()),
                Just("aud-ok".to_owned()),
                Just("authenticated".to_owned()),
                Just(String::new()),
                Just((now + 60).to_string()),
                "[a-z]{0,6}",
            ].prop_map(|s| Some(json!(s))),
            1 => proptest::collection::vec(
                prop_oneof![Just(json!("aud-ok")), Just(json!("x")), Just(json!(1)), Just(json!(null))],
                0..3,
            ).prop_map(|v| Some(json!(v))),
            1 => Just(Some(json!({"nested": now + 60}))),
        ]
    }

    /// Two times in three a value that passes its rule, so that many cases are accepted.
    fn mostly(
        good: Value,
        other: impl proptest::strategy::Strategy<Value = Option<Value>>,
    ) -> impl proptest::strategy::Strategy<Value = Option<Value>> {
        use proptest::prelude::*;
        prop_oneof![2 => Just(Some(good)), 1 => other]
    }

    /// The rules, restated plainly, as the oracle of the property test.
    fn expected(
        claims: &serde_json::Map<String, Value>,
        iss: Option<&str>,
        aud: Option<&str>,
        now: u64,
    ) -> Option<String> {
        fn date(v: &Value, up: bool) -> Option<u64> {
            let f = v.as_f64()?;
            if v.is_u64() {
                let n = v.as_u64()?;
                return (n <= MAX_NUMERIC_DATE).then_some(n);
            }
            if !(0.0..=MAX_NUMERIC_DATE as f64).contains(&f) {
                return None;
            }
            Some(if up { f.ceil() } else { f.floor() } as u64)
        }
        let role = claims.get("role")?.as_str()?;
        if claims.get("sub").is_some_and(|s| !s.is_string()) {
            return None;
        }
        let exp = date(claims.get("exp")?, false)?;
        if exp <= now {
            return None;
        }
        if let Some(nbf) = claims.get("nbf") {
            if date(nbf, true)? > now {
                return None;
            }
        }
        if let Some(iss) = iss {
            if claims.get("iss")?.as_str()? != iss {
                return None;
            }
        }
        if let Some(aud) = aud {
            let ok = match claims.get("aud")? {
                Value::String(s) => s == aud,
                Value::Array(a) => a.iter().any(|v| v.as_str() == Some(aud)),
                _ => false,
            };
            if !ok {
                return None;
            }
        }
        Some(role.to_owned())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Finding #14.6: whatever the claims of a correctly signed token,
        /// `verify_jwt` never panics, and accepts exactly when every rule holds.
        #[test]
        fn claims_of_any_type_never_panic_and_accept_only_by_the_rules(
            exp in mostly(json!(now() + 600), claim_value(now())),
            nbf in mostly(json!(now() - 60), claim_value(now())),
            iat in claim_value(now()),
            aud in mostly(json!("aud-ok"), claim_value(now())),
            iss in mostly(json!("iss-ok"), claim_value(now())),
            role in mostly(json!("authenticated"), claim_value(now())),
            sub in mostly(json!("u1"), claim_value(now())),
            configured in (proptest::prelude::any::<bool>(), proptest::prelude::any::<bool>()),
        ) {
            let mut claims = serde_json::Map::new();
            for (name, value) in [("exp", exp), ("nbf", nbf), ("iat", iat), ("aud", aud), ("iss", iss), ("role", role), ("sub", sub)] {
                if let Some(v) = value {
                    claims.insert(name.into(), v);
                }
            }
            let issuer = configured.0.then_some("iss-ok");
            let audience = configured.1.then_some("aud-ok");
            let a = jwks_auth_with(issuer, audience);
            let t = now();
            let token = jwt(Value::Object(claims.clone()), "jwt-secret");
            let got = a.verify_jwt(&token);
            let want = expected(&claims, issuer, audience, t);
            proptest::prop_assert_eq!(got.as_ref().ok().map(|c| c.role.clone()), want, "{:?} {:?}", claims, got);
            if let Ok(cred) = got {
                let exp = cred.expires_at().expect("an accepted token has an expiry");
                proptest::prop_assert!(exp > t && exp <= MAX_NUMERIC_DATE);
            }
        }
    }
}
