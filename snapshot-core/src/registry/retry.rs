//! Classifying registry errors and retrying the transient ones.
//!
//! Only errors of the registry client are retried, and only transient ones
//! (connection failures, timeouts, HTTP 5xx and 429), with exponential
//! backoff; errors from our side ([`Failure::Fatal`]) end the operation at
//! once. Messages are bounded: registries may answer with whole HTML pages.

use std::future::Future;
use std::time::Duration;

use oci_client::errors::{OciDistributionError, OciErrorCode};

use crate::error::{Error, Result};

/// First retry delay; doubled per attempt up to [`BACKOFF_CAP`].
const BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest retry delay.
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// How an error from the registry client is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// Worth retrying; after the last retry: [`Error::RegistryUnreachable`].
    Transient,
    /// [`Error::RegistryUnauthorized`].
    Unauthorized,
    /// [`Error::Registry`], saying what was not found.
    NotFound,
    /// [`Error::Registry`].
    Other,
}

fn class_of_status(code: u16) -> Class {
    match code {
        401 | 403 => Class::Unauthorized,
        404 => Class::NotFound,
        501 | 505 => Class::Other,
        408 | 429 | 500..=599 => Class::Transient,
        _ => Class::Other,
    }
}

pub(super) fn classify(e: &OciDistributionError) -> Class {
    use OciDistributionError as E;
    match e {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => Class::Unauthorized,
        E::ServerError { code, .. } => class_of_status(*code),
        E::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                Class::Unauthorized
            } else if codes.contains(&&OciErrorCode::Toomanyrequests) {
                Class::Transient
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::NameUnknown
                        | OciErrorCode::ManifestUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::ManifestBlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                Class::NotFound
            } else {
                Class::Other
            }
        }
        E::RequestError(r) => match r.status() {
            Some(s) => class_of_status(s.as_u16()),
            None if r.is_builder() || r.is_redirect() => Class::Other,
            // Connect, timeout, reset, truncated body.
            None => Class::Transient,
        },
        E::IoError(_) => Class::Transient,
        E::ImageManifestNotFoundError(_) => Class::NotFound,
        _ => Class::Other,
    }
}

/// The error and its sources on one line, bounded (registries may answer
/// with whole HTML pages).
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = crate::error::message_chain(e);
    const MAX: usize = 600;
    if s.len() > MAX {
        let mut cut = MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn to_error(e: &OciDistributionError, registry: &str, what: &str, attempts: u32) -> Error {
    let chain = error_chain(e);
    let registry = registry.to_string();
    match classify(e) {
        Class::Transient => Error::RegistryUnreachable {
            registry,
            message: format!("{what}: {chain} (gave up after {attempts} attempt(s))"),
        },
        Class::Unauthorized => Error::RegistryUnauthorized {
            registry,
            message: format!("{what}: {chain}"),
        },
        Class::NotFound => Error::Registry {
            registry,
            message: format!("{what}: not found (unknown repository, tag or blob): {chain}"),
        },
        Class::Other => Error::Registry {
            registry,
            message: format!("{what}: {chain}"),
        },
    }
}

/// The delay before retry number `attempt` (0-based).
fn backoff(attempt: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
        .min(BACKOFF_CAP)
}

/// A failed attempt.
pub(super) enum Failure {
    /// From the registry client: classified, maybe retried.
    Oci(OciDistributionError),
    /// From our side (reading the file, the blob source): not retried.
    Fatal(Error),
}

/// Runs `op` until it succeeds, retrying transient registry errors.
pub(super) async fn retry<T, F, Fut>(
    retries: u32,
    registry: &str,
    what: &str,
    mut op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, Failure>>,
{
    let mut attempt = 0u32;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Oci(e)) => {
                if classify(&e) == Class::Transient && attempt < retries {
                    let delay = backoff(attempt);
                    tracing::warn!(registry, what, error = %error_chain(&e), ?delay, "transient registry error, retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                    continue;
                }
                return Err(to_error(&e, registry, what, attempt + 1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(code: &str) -> OciDistributionError {
        OciDistributionError::RegistryError {
            envelope: serde_json::from_str(&format!(
                r#"{{"errors":[{{"code":"{code}","message":"m"}}]}}"#
            ))
            .unwrap(),
            url: "u".into(),
        }
    }

    fn server(code: u16) -> OciDistributionError {
        OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: "m".into(),
        }
    }

    #[test]
    fn error_mapping() {
        assert_eq!(classify(&server(401)), Class::Unauthorized);
        assert_eq!(classify(&server(403)), Class::Unauthorized);
        assert_eq!(classify(&server(404)), Class::NotFound);
        assert_eq!(classify(&server(429)), Class::Transient);
        assert_eq!(classify(&server(502)), Class::Transient);
        assert_eq!(classify(&server(400)), Class::Other);
        assert_eq!(classify(&envelope("DENIED")), Class::Unauthorized);
        assert_eq!(classify(&envelope("NAME_UNKNOWN")), Class::NotFound);
        assert_eq!(classify(&envelope("TOOMANYREQUESTS")), Class::Transient);
        assert_eq!(classify(&envelope("MANIFEST_INVALID")), Class::Other);
        assert_eq!(
            classify(&OciDistributionError::UnauthorizedError { url: "u".into() }),
            Class::Unauthorized
        );
        let io = OciDistributionError::IoError(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        ));
        assert_eq!(classify(&io), Class::Transient);

        let e = to_error(&server(401), "r", "push", 1);
        assert!(matches!(e, Error::RegistryUnauthorized { .. }));
        let e = to_error(&envelope("NAME_UNKNOWN"), "r", "push manifest", 1);
        assert!(matches!(e, Error::Registry { .. }));
        assert!(e.to_string().contains("not found"), "{e}");
        let e = to_error(&server(503), "r", "push", 3);
        assert!(matches!(e, Error::RegistryUnreachable { .. }));
        assert!(e.to_string().contains("3 attempt"), "{e}");
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(200));
        assert_eq!(backoff(1), Duration::from_millis(400));
        assert_eq!(backoff(4), Duration::from_millis(3200));
        assert_eq!(backoff(5), BACKOFF_CAP);
        assert_eq!(backoff(40), BACKOFF_CAP);
    }
}
