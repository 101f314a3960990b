//! JWT callers: verifies a token's signature, algorithm, time window, issuer and audience,
//! and reads the caller's subject, plan and organisation from configurable claims.
//!
//! A token that fails any check is an error, never an identity: a forged or tampered
//! `sub` cannot buy a fresh quota. Expiry is checked against the request's one clock
//! reading (not the wall clock), so tests can move time. Keys are loaded at compile time
//! (`config::compile`); nothing here reads a file or the environment.

use std::collections::HashMap;
use std::fmt;

use http::header::{HeaderName, AUTHORIZATION};
use http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{subject_hash, Identity, Kind};
use crate::limiter::clock::{Nanos, SECOND};
use crate::policy::ProfileId;

/// Where the token travels.
#[derive(Clone, Debug)]
pub enum TokenLocation {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// A header holding the token (a `Bearer ` prefix is accepted too).
    Header(HeaderName),
}

/// The verification keys.
pub enum Keys {
    /// One key for every token.
    One(DecodingKey),
    /// A JWKS: the token's `kid` picks the key; a token without `kid` needs a set of one.
    Set(Vec<(Option<String>, DecodingKey)>),
}

/// Why a token was refused; bounded, for logs (never the token itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts of JSON, or `alg` unknown (such as `none`).
    #[error("malformed token or unknown algorithm")]
    Malformed,
    /// `alg` is not one of the configured algorithms.
    #[error("algorithm not accepted")]
    Algorithm,
    /// No configured key matches the token's `kid`.
    #[error("no key for the token's kid")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `exp` is missing or passed.
    #[error("expired or no exp claim")]
    Expired,
    /// `nbf` is in the future.
    #[error("not valid yet (nbf)")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    Issuer,
    /// `aud` does not name the configured audience.
    #[error("wrong audience")]
    Audience,
    /// The subject claim is missing or not a string or number.
    #[error("no subject claim")]
    NoSubject,
}

/// A compiled `jwt` identify source.
pub struct Jwt {
    /// Where the token is read from.
    pub location: TokenLocation,
    /// Verification keys.
    pub keys: Keys,
    /// Algorithms, issuer and audience (time is checked by `verify` itself).
    pub validation: Validation,
    /// Allowed clock skew on `exp` and `nbf`.
    pub leeway: Nanos,
    /// Claim naming the caller.
    pub subject_claim: Box<str>,
    /// Claim naming the plan.
    pub plan_claim: Option<Box<str>>,
    /// Claim naming the organisation.
    pub org_claim: Option<Box<str>>,
    /// Plan names a plan claim may hold, and their profiles.
    pub plans: HashMap<Box<str>, ProfileId>,
    /// Profile of tokens without a known plan.
    pub default_profile: ProfileId,
}

impl fmt::Debug for Jwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys stay out of debug output (a shared secret is one of them).
        f.debug_struct("Jwt")
            .field("location", &self.location)
            .field("algorithms", &self.validation.algorithms)
            .field("subject_claim", &self.subject_claim)
            .field("plan_claim", &self.plan_claim)
            .field("org_claim", &self.org_claim)
            .finish_non_exhaustive()
    }
}

impl Jwt {
    /// Validation settings for `algorithms`, with time checks left to [`Jwt::verify`].
    pub fn validation(
        algorithms: Vec<Algorithm>,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Validation {
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        // A configured issuer or audience must be present, not merely right when present.
        if let Some(issuer) = issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        match audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        validation
    }

    /// The token the request carries, if it carries something shaped like one (three
    /// dot-separated parts). Anything else is left to the next identify source.
    pub fn token<'a>(&self, parts: &'a Parts) -> Option<&'a str> {
        let value = match &self.location {
            TokenLocation::Bearer => crate::headers::get(&parts.headers, &AUTHORIZATION)?,
            TokenLocation::Header(name) => crate::headers::get(&parts.headers, name)?,
        };
        let value = value.to_str().ok()?.trim();
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            Some(_) => return None,
            None if matches!(self.location, TokenLocation::Header(_)) => value,
            None => return None,
        };
        (token.bytes().filter(|&b| b == b'.').count() == 2).then_some(token)
    }

    /// Verifies `token` at `now` and returns the caller it names.
    pub fn verify(&self, token: &str, now: Nanos) -> Result<Identity, TokenError> {
        let key = self.key(token)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation)
            .map_err(|e| classify(e.kind()))?;
        let claims = data.claims;
        let exp = claims
            .get("exp")
            .and_then(Value::as_f64)
            .ok_or(TokenError::Expired)?;
        if seconds_to_nanos(exp).saturating_add(self.leeway) < now {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_f64().ok_or(TokenError::NotYetValid)?;
            if seconds_to_nanos(nbf) > now.saturating_add(self.leeway) {
                return Err(TokenError::NotYetValid);
            }
        }
        let subject = claim_text(&claims, &self.subject_claim).ok_or(TokenError::NoSubject)?;
        let profile = self
            .plan_claim
            .as_deref()
            .and_then(|claim| claim_text(&claims, claim))
            .and_then(|plan| self.plans.get(plan.as_ref()).copied())
            .unwrap_or(self.default_profile);
        let org = self
            .org_claim
            .as_deref()
            .and_then(|claim| claim_text(&claims, claim))
            .map(|org| subject_hash(b'o', org.as_bytes()));
        Ok(Identity {
            kind: Kind::Jwt,
            // Tag `j`: a token subject never shares a counter with an API key of the same text.
            subject: subject_hash(b'j', subject.as_bytes()),
            org,
            profile,
        })
    }

    fn key(&self, token: &str) -> Result<&DecodingKey, TokenError> {
        match &self.keys {
            Keys::One(key) => Ok(key),
            Keys::Set(set) => {
                let header =
                    jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
                match (header.kid.as_deref(), set.as_slice()) {
                    (None, [(_, only)]) => Ok(only),
                    (None, _) => Err(TokenError::UnknownKey),
                    (Some(kid), set) => set
                        .iter()
                        .find(|(id, _)| id.as_deref() == Some(kid))
                        .map(|(_, key)| key)
                        .ok_or(TokenError::UnknownKey),
                }
            }
        }
    }
}

fn classify(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => TokenError::Algorithm,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::Issuer,
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => TokenError::Issuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => TokenError::Audience,
        _ => TokenError::Malformed,
    }
}

/// A string claim, or a number claim as its decimal text.
fn claim_text<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    match claims.get(name)? {
        Value::String(s) if !s.is_empty() => Some(s.as_str().into()),
        Value::Number(n) => Some(n.to_string().into()),
        _ => None,
    }
}

/// A NumericDate (seconds, possibly fractional, possibly negative) in unix nanoseconds.
fn seconds_to_nanos(seconds: f64) -> Nanos {
    if seconds <= 0.0 {
        0
    } else if seconds >= (u64::MAX / SECOND) as f64 {
        u64::MAX
    } else {
        (seconds * SECOND as f64) as Nanos
    }
}

#[cfg(test)]
mod tests;
