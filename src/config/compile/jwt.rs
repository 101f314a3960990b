//! Compiles a `jwt` identify source: parses the algorithms, loads the key (a secret from
//! the environment or a file, a PEM public key, or a JWKS), and resolves plan names.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};

use super::Compiler;
use crate::config::file::JwtSource;
use crate::identity::jwt::{Jwt, Keys, TokenLocation};
use crate::policy::ProfileId;

/// The algorithm families a source may use; one source holds one family.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(algorithm: Algorithm) -> Family {
    use Algorithm::*;
    match algorithm {
        HS256 | HS384 | HS512 => Family::Hmac,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
        ES256 | ES384 => Family::Ec,
        EdDSA => Family::Ed,
    }
}

/// Default clock skew allowed on `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

impl Compiler {
    /// Compiles one `jwt` source at `path` (`identify[i].jwt`).
    pub(super) fn jwt(
        &mut self,
        source: &JwtSource,
        path: &str,
        plan_index: &dyn Fn(&str) -> Option<usize>,
        plan_names: &[std::sync::Arc<str>],
    ) -> Option<Jwt> {
        let mut algorithms = Vec::new();
        for (i, name) in source.algorithms.iter().enumerate() {
            match name.parse::<Algorithm>() {
                Ok(algorithm) => algorithms.push(algorithm),
                Err(_) => self.problem(
                    format!("{path}.algorithms[{i}]"),
                    format!("unknown algorithm \"{name}\"; expected HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA"),
                ),
            }
        }
        if source.algorithms.is_empty() {
            self.problem(
                format!("{path}.algorithms"),
                "name at least one algorithm, e.g. `algorithms: [RS256]`".into(),
            );
        }
        let families: Vec<Family> = algorithms.iter().map(|&a| family(a)).collect();
        if families.windows(2).any(|w| w[0] != w[1]) {
            // Mixing families invites algorithm confusion (an RSA public key used as an HMAC secret).
            self.problem(
                format!("{path}.algorithms"),
                "all algorithms of one source must be of one family (HS*, RS*/PS*, ES* or EdDSA); add a second `jwt` source for another".into(),
            );
            return None;
        }
        let family = *families.first()?;
        let keys = self.jwt_keys(source, path, family)?;

        let location = match &source.header {
            None => TokenLocation::Bearer,
            Some(name) => match HeaderName::try_from(name.as_str()) {
                Ok(name) if name == http::header::AUTHORIZATION => TokenLocation::Bearer,
                Ok(name) => TokenLocation::Header(name),
                Err(_) => {
                    self.problem(
                        format!("{path}.header"),
                        format!("\"{name}\" is not a valid header name"),
                    );
                    return None;
                }
            },
        };
        let default_plan = source.plan.as_deref().unwrap_or(super::DEFAULT_PLAN);
        let Some(default_profile) = plan_index(default_plan) else {
            self.problem(
                format!("{path}.plan"),
                format!(
                    "unknown plan \"{default_plan}\"; plans are: {}",
                    super::list(plan_names.iter().map(|p| &**p))
                ),
            );
            return None;
        };
        let plans: HashMap<Box<str>, ProfileId> = plan_names
            .iter()
            .enumerate()
            .map(|(i, name)| (Box::from(&**name), i as ProfileId))
            .collect();
        let leeway = source.leeway.map_or(DEFAULT_LEEWAY, |d| d.0);
        Some(Jwt {
            location,
            keys,
            validation: Jwt::validation(
                algorithms,
                source.issuer.as_deref(),
                source.audience.as_deref(),
            ),
            leeway: u64::try_from(leeway.as_nanos()).unwrap_or(u64::MAX),
            subject_claim: source.subject_claim.as_deref().unwrap_or("sub").into(),
            plan_claim: source.plan_claim.as_deref().map(Box::from),
            org_claim: source.org_claim.as_deref().map(Box::from),
            plans,
            default_profile: default_profile as ProfileId,
        })
    }

    fn jwt_keys(&mut self, source: &JwtSource, path: &str, family: Family) -> Option<Keys> {
        let given = [
            ("secret_env", source.secret_env.is_some()),
            ("secret_file", source.secret_file.is_some()),
            ("public_key_file", source.public_key_file.is_some()),
            ("jwks_file", source.jwks_file.is_some()),
        ];
        let named: Vec<&str> = given.iter().filter(|g| g.1).map(|g| g.0).collect();
        let expected = if family == Family::Hmac {
            "`secret_env: VAR` or `secret_file: PATH`"
        } else {
            "`public_key_file: PATH` (PEM) or `jwks_file: PATH`"
        };
        let fits = |name: &str| (family == Family::Hmac) == name.starts_with("secret");
        if named.len() != 1 || !fits(named[0]) {
            self.problem(
                path.into(),
                format!(
                    "{} needs exactly one of {expected}",
                    match family {
                        Family::Hmac => "an HMAC source",
                        Family::Rsa => "an RSA source",
                        Family::Ec => "an EC source",
                        Family::Ed => "an EdDSA source",
                    }
                ),
            );
            return None;
        }
        let field = named[0];
        let at = format!("{path}.{field}");
        match field {
            "secret_env" => {
                let var = source.secret_env.as_deref().unwrap_or_default();
                match std::env::var(var) {
                    Ok(secret) if !secret.is_empty() => {
                        Some(Keys::One(DecodingKey::from_secret(secret.as_bytes())))
                    }
                    _ => {
                        self.problem(at, format!("environment variable {var} is not set or empty; it must hold the HMAC secret"));
                        None
                    }
                }
            }
            "secret_file" => {
                let bytes = self.read(&at, source.secret_file.as_deref().unwrap_or_default())?;
                let secret = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
                let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
                if secret.is_empty() {
                    self.problem(at, "the secret file is empty".into());
                    return None;
                }
                Some(Keys::One(DecodingKey::from_secret(secret)))
            }
            "public_key_file" => {
                let pem = self.read(&at, source.public_key_file.as_deref().unwrap_or_default())?;
                let key = match family {
                    Family::Rsa => DecodingKey::from_rsa_pem(&pem),
                    Family::Ec => DecodingKey::from_ec_pem(&pem),
                    Family::Ed | Family::Hmac => DecodingKey::from_ed_pem(&pem),
                };
                match key {
                    Ok(key) => Some(Keys::One(key)),
                    Err(e) => {
                        self.problem(
                            at,
                            format!("not a PEM public key for {family:?} algorithms: {e}"),
                        );
                        None
                    }
                }
            }
            _ => {
                let text = self.read(&at, source.jwks_file.as_deref().unwrap_or_default())?;
                let set: JwkSet = match serde_json::from_slice(&text) {
                    Ok(set) => set,
                    Err(e) => {
                        self.problem(at, format!("not a JWKS (`{{\"keys\": [...]}}`): {e}"));
                        return None;
                    }
                };
                let mut keys = Vec::new();
                for (i, jwk) in set.keys.iter().enumerate() {
                    match DecodingKey::from_jwk(jwk) {
                        Ok(key) => keys.push((jwk.common.key_id.clone(), key)),
                        Err(e) => self.problem(at.clone(), format!("key {i}: {e}")),
                    }
                }
                if set.keys.is_empty() {
                    self.problem(at, "the JWKS holds no key".into());
                    return None;
                }
                Some(Keys::Set(keys))
            }
        }
    }

    /// Reads a file named by the config, relative to the config's directory.
    fn read(&mut self, at: &str, name: &str) -> Option<Vec<u8>> {
        let full = match &self.dir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        };
        std::fs::read(&full)
            .map_err(|e| {
                self.problem(
                    at.into(),
                    format!("cannot read \"{}\": {e}", full.display()),
                )
            })
            .ok()
    }
}
