//! Connect-time tokens: HS256 JWTs naming the user and the topics it may
//! join.
//!
//! A token travels as the `token` connect parameter (both clients send
//! params as the query string) or, for the phoenix client's `authToken`
//! option, in `Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.<b64>`.
//! The claims herald reads:
//!
//! - `sub` (required): the user id; it names the socket for
//!   `POST /api/disconnect` and the user in presence notices;
//! - `exp` (required): expiry, seconds since the epoch; checked with no
//!   leeway unless `auth.leeway_seconds` says otherwise;
//! - `nbf` (optional): not valid before, checked the same way;
//! - `channels` (optional): topic patterns (`"room:*"`) the user may join;
//!   absent, the channel rules alone decide.
//!
//! Only HS256 is accepted; every refusal says why (missing, expired, not
//! yet valid, bad signature, wrong algorithm, missing claim, malformed).

use base64::Engine as _;
use herald::{Reject, Request, channels::TopicPattern};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

/// The subprotocol prefix the phoenix client puts its `authToken` behind.
const PHOENIX_BEARER_PREFIX: &str = "base64url.bearer.phx.";

/// Who a verified token says the client is.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) user: String,
    /// Topics the user may join; `None`: any the rules allow.
    pub(crate) channels: Option<Vec<TopicPattern>>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    /// Optional here so that its absence gets its own reason.
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
}

/// Why a connection's token was refused; each maps to 401 with its text as
/// the response body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("missing token: pass it as the `token` connect parameter")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token algorithm {0} is not accepted: sign with HS256")]
    WrongAlgorithm(String),
    #[error("token lacks the `{0}` claim")]
    MissingClaim(String),
    #[error("token is malformed")]
    Malformed,
}

impl From<AuthError> for Reject {
    fn from(error: AuthError) -> Self {
        Self::unauthorized().with_reason(&error.to_string())
    }
}

/// Checks tokens against one HMAC secret.
pub(crate) struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier").finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// A verifier for `secret`, tolerating `leeway` seconds of clock skew
    /// on `exp` and `nbf`.
    pub(crate) fn new(secret: &str, leeway: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // jsonwebtoken's default is 60 s past `exp`: too generous for a
        // token that grants a connection.
        validation.leeway = leeway;
        validation.validate_nbf = true;
        Self {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Finds the request's token and verifies it.
    pub(crate) fn authenticate(&self, request: &Request) -> Result<Identity, AuthError> {
        let token = request_token(request).ok_or(AuthError::Missing)?;
        self.verify(&token)
    }

    pub(crate) fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|err| {
                match err.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    ErrorKind::InvalidSignature => AuthError::BadSignature,
                    ErrorKind::MissingRequiredClaim(claim) => {
                        AuthError::MissingClaim(claim.clone())
                    }
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        AuthError::WrongAlgorithm(header_algorithm(token))
                    }
                    // An algorithm jsonwebtoken does not know (`none`) fails
                    // while the header is read.
                    _ => match header_algorithm(token).as_str() {
                        "HS256" | "?" => AuthError::Malformed,
                        other => AuthError::WrongAlgorithm(other.to_owned()),
                    },
                }
            })?;
        let claims = data.claims;
        let user = claims
            .sub
            .ok_or_else(|| AuthError::MissingClaim("sub".to_owned()))?;
        Ok(Identity {
            user,
            channels: claims
                .channels
                .map(|patterns| patterns.iter().map(|p| TopicPattern::new(p)).collect()),
        })
    }
}

/// The `alg` of a token's header, read without trusting it (`?` if there
/// is none), for the refusal's reason.
fn header_algorithm(token: &str) -> String {
    let header = token.split('.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .and_then(|header| {
            header
                .get("alg")?
                .as_str()
                .map(|alg| alg.chars().take(16).collect())
        })
        .unwrap_or_else(|| "?".to_owned())
}

/// The token from the `token` parameter, or from the phoenix client's
/// bearer subprotocol.
fn request_token(request: &Request) -> Option<String> {
    if let Some(token) = request.query_param("token") {
        return Some(token.into_owned());
    }
    let encoded = request
        .subprotocols()
        .find_map(|protocol| protocol.strip_prefix(PHOENIX_BEARER_PREFIX))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    fn token(secret: &str, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn in_an_hour() -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        now.as_secs() + 3600
    }

    #[test]
    fn a_good_token_names_the_user_and_topics() {
        let verifier = TokenVerifier::new("s3cret", 0);
        let claims = serde_json::json!({"sub": "ada", "exp": in_an_hour(), "channels": ["room:*"]});
        let identity = verifier.verify(&token("s3cret", &claims)).unwrap();
        assert_eq!(identity.user, "ada");
        assert_eq!(identity.channels, Some(vec![TopicPattern::new("room:*")]),);
    }

    fn now() -> u64 {
        in_an_hour() - 3600
    }

    /// A token signed with `alg` (header only: the signature is garbage).
    fn with_algorithm(alg: &str) -> String {
        let encode = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        let header = encode(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
        let claims = encode(&format!(r#"{{"sub":"ada","exp":{}}}"#, in_an_hour()));
        format!("{header}.{claims}.c2ln")
    }

    #[test]
    fn expiry_and_not_before_have_no_leeway_unless_configured() {
        let strict = TokenVerifier::new("s3cret", 0);
        let lenient = TokenVerifier::new("s3cret", 120);
        let just_expired = serde_json::json!({"sub": "ada", "exp": now() - 5});
        let not_yet = serde_json::json!({"sub": "ada", "exp": in_an_hour(), "nbf": now() + 30});
        assert_eq!(
            strict.verify(&token("s3cret", &just_expired)).unwrap_err(),
            AuthError::Expired
        );
        assert_eq!(
            strict.verify(&token("s3cret", &not_yet)).unwrap_err(),
            AuthError::NotYetValid
        );
        assert!(lenient.verify(&token("s3cret", &just_expired)).is_ok());
        assert!(lenient.verify(&token("s3cret", &not_yet)).is_ok());
    }

    #[test]
    fn other_algorithms_are_refused_by_name() {
        let verifier = TokenVerifier::new("s3cret", 0);
        for alg in ["none", "HS512", "RS256"] {
            assert_eq!(
                verifier.verify(&with_algorithm(alg)).unwrap_err(),
                AuthError::WrongAlgorithm(alg.to_owned()),
                "{alg}"
            );
        }
    }

    #[test]
    fn bad_tokens_say_why() {
        let verifier = TokenVerifier::new("s3cret", 0);
        let good = serde_json::json!({"sub": "ada", "exp": in_an_hour()});
        let expired = serde_json::json!({"sub": "ada", "exp": 1_000_000});
        let no_sub = serde_json::json!({"exp": in_an_hour()});
        assert_eq!(
            verifier.verify(&token("other", &good)).unwrap_err(),
            AuthError::BadSignature
        );
        assert_eq!(
            verifier.verify(&token("s3cret", &expired)).unwrap_err(),
            AuthError::Expired
        );
        assert_eq!(
            verifier.verify(&token("s3cret", &no_sub)).unwrap_err(),
            AuthError::MissingClaim("sub".to_owned())
        );
        assert_eq!(
            verifier.verify("not.a.jwt").unwrap_err(),
            AuthError::Malformed
        );
    }

    #[test]
    fn the_phoenix_bearer_subprotocol_carries_a_token() {
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("abc.def.ghi");
        let request = Request::parse_for_test(&format!(
            "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\n\
             Sec-WebSocket-Protocol: phoenix, {PHOENIX_BEARER_PREFIX}{encoded}\r\n\r\n"
        ));
        assert_eq!(request_token(&request).as_deref(), Some("abc.def.ghi"));
    }
}
