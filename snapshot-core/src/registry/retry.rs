//! Classifying registry errors and retrying the transient ones.
//!
//! Only errors of the registry are retried, and only transient ones
//! (connection failures, stalls, timeouts, HTTP 5xx, 408 and 429): as long
//! as the registry's `Retry-After` asks (seconds or an HTTP date), else
//! with exponential backoff and jitter, until a budget of time
//! ([`RetryPolicy::budget`], counted from the first failure) or of retries
//! is spent. An operation that made progress (an upload the registry
//! acknowledged more of) starts a new budget. Permanent errors (refused
//! credentials, unknown repository, invalid digest) and errors from our
//! side ([`Failure::Fatal`]) end the operation at once. Messages are
//! bounded: registries may answer with whole HTML pages.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use oci_client::errors::{OciDistributionError, OciErrorCode};

use crate::error::{Error, Result};

/// First retry delay; doubled per retry up to [`BACKOFF_CAP`], then
/// jittered down by up to half.
const BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest backoff delay (a `Retry-After` may ask for more).
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// When to stop retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RetryPolicy {
    /// At most this many retries of one operation (0: none).
    pub(super) retries: u32,
    /// No retry starts after this much time since the first failure.
    pub(super) budget: Duration,
}

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
            } else if codes.iter().any(|c| match c {
                OciErrorCode::Toomanyrequests => true,
                // distribution's 503 (the client keeps no status with a code).
                OciErrorCode::Other(c) => c == "UNAVAILABLE",
                _ => false,
            }) {
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

/// The class of an answer of the registry: by its status when that says
/// transient or refused (an error body's code does not make a 503
/// permanent), else by its error code, else by its status again.
fn classify_answer(status: u16, e: &OciDistributionError) -> Class {
    match (class_of_status(status), classify(e)) {
        (by_status @ (Class::Transient | Class::Unauthorized), _) => by_status,
        (by_status, Class::Other) => by_status,
        (_, by_code) => by_code,
    }
}

fn to_error(
    class: Class,
    e: &OciDistributionError,
    registry: &str,
    what: &str,
    gave_up: &str,
) -> Error {
    let chain = error_chain(e);
    let registry = registry.to_string();
    match class {
        Class::Transient => Error::RegistryUnreachable {
            registry,
            message: format!("{what}: {chain} ({gave_up})"),
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

/// The delay before retry number `retry` (0-based), before jitter.
fn backoff(retry: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX))
        .min(BACKOFF_CAP)
}

/// `d` shortened by a random part of up to half, so that clients that
/// failed together do not retry together.
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + half.mul_f64(fastrand::f64())
}

/// The delay a `Retry-After` header asks for: delta-seconds or an HTTP
/// date (a date in the past means now). `None` when it is neither.
pub(super) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) is RFC 2822's syntax.
    let when: SystemTime = chrono::DateTime::parse_from_rfc2822(value).ok()?.into();
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A failed attempt.
#[derive(Debug)]
pub(super) enum Failure {
    /// From the registry client: classified, maybe retried.
    Oci(OciDistributionError),
    /// The registry's answer to one of our own requests, classified like
    /// the client's errors, with the delay its `Retry-After` asked for.
    Answer {
        /// The HTTP status.
        status: u16,
        /// The answer as the client's error type.
        error: OciDistributionError,
        /// From `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// From our side (reading the file, the blob source): not retried.
    Fatal(Error),
}

impl Failure {
    /// The HTTP status of the registry's answer, if this is one.
    pub(super) fn status(&self) -> Option<u16> {
        match self {
            Failure::Answer { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The registry's error, if this is one.
    pub(super) fn registry_error(&self) -> Option<&OciDistributionError> {
        match self {
            Failure::Oci(e) | Failure::Answer { error: e, .. } => Some(e),
            Failure::Fatal(_) => None,
        }
    }
}

/// The retry state of one operation.
pub(super) struct Retrier<'a> {
    policy: RetryPolicy,
    registry: &'a str,
    what: &'a str,
    /// First failure since the start or the last progress.
    since: Option<Instant>,
    /// Retries since then.
    retries: u32,
    /// Attempts in all.
    attempts: u32,
}

impl<'a> Retrier<'a> {
    pub(super) fn new(policy: RetryPolicy, registry: &'a str, what: &'a str) -> Self {
        Retrier {
            policy,
            registry,
            what,
            since: None,
            retries: 0,
            attempts: 0,
        }
    }

    /// The operation advanced: a new budget starts.
    pub(super) fn progressed(&mut self) {
        self.since = None;
        self.retries = 0;
    }

    /// After a failed attempt: waits until the next one may start, or
    /// returns the error that ends the operation.
    pub(super) async fn failed(&mut self, f: Failure) -> Result<()> {
        self.attempts += 1;
        let (e, class, retry_after) = match f {
            Failure::Fatal(e) => return Err(e),
            Failure::Oci(e) => {
                let class = classify(&e);
                (e, class, None)
            }
            Failure::Answer {
                status,
                error,
                retry_after,
            } => {
                let class = classify_answer(status, &error);
                (error, class, retry_after)
            }
        };
        let since = *self.since.get_or_insert_with(Instant::now);
        if class != Class::Transient {
            return Err(to_error(class, &e, self.registry, self.what, ""));
        }
        let delay = retry_after.unwrap_or_else(|| jitter(backoff(self.retries)));
        let spent = since.elapsed();
        if self.retries >= self.policy.retries || spent + delay > self.policy.budget {
            let asked = retry_after
                .map(|d| format!("; the registry asked to wait {d:?}"))
                .unwrap_or_default();
            let gave_up = format!(
                "gave up after {} attempt(s) over {:.1} s{asked}",
                self.attempts,
                spent.as_secs_f64()
            );
            return Err(to_error(class, &e, self.registry, self.what, &gave_up));
        }
        tracing::warn!(
            registry = self.registry,
            what = self.what,
            error = %error_chain(&e),
            ?delay,
            "transient registry error, retrying"
        );
        tokio::time::sleep(delay).await;
        self.retries += 1;
        Ok(())
    }
}

/// Runs `op` until it succeeds, retrying transient registry errors.
pub(super) async fn retry<T, F, Fut>(
    policy: RetryPolicy,
    registry: &str,
    what: &str,
    mut op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, Failure>>,
{
    let mut r = Retrier::new(policy, registry, what);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(f) => r.failed(f).await?,
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
        assert_eq!(classify(&envelope("UNAVAILABLE")), Class::Transient);
        assert_eq!(classify(&envelope("MANIFEST_INVALID")), Class::Other);
        assert_eq!(classify(&envelope("DIGEST_INVALID")), Class::Other);
        assert_eq!(
            classify(&OciDistributionError::UnauthorizedError { url: "u".into() }),
            Class::Unauthorized
        );
        let io = OciDistributionError::IoError(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        ));
        assert_eq!(classify(&io), Class::Transient);

        // Our own requests' answers: a transient status wins over the code.
        assert_eq!(
            classify_answer(503, &envelope("UNAVAILABLE")),
            Class::Transient
        );
        assert_eq!(classify_answer(500, &envelope("UNKNOWN")), Class::Transient);
        assert_eq!(
            classify_answer(401, &envelope("UNKNOWN")),
            Class::Unauthorized
        );
        assert_eq!(
            classify_answer(404, &envelope("NAME_UNKNOWN")),
            Class::NotFound
        );
        assert_eq!(
            classify_answer(404, &envelope("BLOB_UPLOAD_UNKNOWN")),
            Class::NotFound
        );
        assert_eq!(
            classify_answer(400, &envelope("DIGEST_INVALID")),
            Class::Other
        );
        assert_eq!(
            classify_answer(400, &envelope("DENIED")),
            Class::Unauthorized
        );

        let e = to_error(Class::Unauthorized, &server(401), "r", "push", "");
        assert!(matches!(e, Error::RegistryUnauthorized { .. }));
        let e = to_error(
            Class::NotFound,
            &envelope("NAME_UNKNOWN"),
            "r",
            "push manifest",
            "",
        );
        assert!(matches!(e, Error::Registry { .. }));
        assert!(e.to_string().contains("not found"), "{e}");
        let e = to_error(
            Class::Transient,
            &server(503),
            "r",
            "push",
            "gave up after 3 attempt(s)",
        );
        assert!(matches!(e, Error::RegistryUnreachable { .. }));
        assert!(e.to_string().contains("3 attempt"), "{e}");
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(4), Duration::from_millis(4000));
        assert_eq!(backoff(7), BACKOFF_CAP);
        assert_eq!(backoff(40), BACKOFF_CAP);
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(2));
            assert!(
                j >= Duration::from_secs(1) && j <= Duration::from_secs(2),
                "{j:?}"
            );
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        // Sun, 06 Nov 1994 08:49:37 GMT
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        // In the past: at once.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn budget_in_time_and_retry_after() {
        let policy = RetryPolicy {
            retries: 1000,
            budget: Duration::from_millis(600),
        };
        let start = Instant::now();
        let mut calls = 0;
        // Always 503 with Retry-After: 0 s... then 200 ms: retried until
        // the budget is spent, then unreachable.
        let r: Result<()> = retry(policy, "r", "op", || {
            calls += 1;
            async {
                Err(Failure::Answer {
                    status: 503,
                    error: server(503),
                    retry_after: Some(Duration::from_millis(200)),
                })
            }
        })
        .await;
        let e = r.unwrap_err();
        assert!(matches!(e, Error::RegistryUnreachable { .. }), "{e}");
        assert_eq!(calls, 3, "{e}");
        let spent = start.elapsed();
        assert!(
            spent >= Duration::from_millis(400) && spent < Duration::from_millis(600),
            "{spent:?}"
        );
        assert!(e.to_string().contains("asked to wait 200ms"), "{e}");

        // Permanent: at once.
        let start = Instant::now();
        let r: Result<()> = retry(policy, "r", "op", || async {
            Err(Failure::Answer {
                status: 400,
                error: envelope("DIGEST_INVALID"),
                retry_after: None,
            })
        })
        .await;
        assert!(matches!(r, Err(Error::Registry { .. })), "{r:?}");
        // A Retry-After beyond the budget: no wait at all.
        let r: Result<()> = retry(policy, "r", "op", || async {
            Err(Failure::Answer {
                status: 429,
                error: server(429),
                retry_after: Some(Duration::from_secs(3600)),
            })
        })
        .await;
        assert!(matches!(r, Err(Error::RegistryUnreachable { .. })), "{r:?}");
        assert!(start.elapsed() < Duration::from_millis(100));

        // Progress renews the budget: more waiting in all than one budget.
        let start = Instant::now();
        let mut r = Retrier::new(policy, "r", "op");
        for _ in 0..4 {
            let f = Failure::Answer {
                status: 500,
                error: server(500),
                retry_after: Some(Duration::from_millis(400)),
            };
            r.failed(f).await.unwrap();
            r.progressed();
        }
        assert!(start.elapsed() >= Duration::from_millis(1600));
        // A limit on retries too.
        let few = RetryPolicy {
            retries: 1,
            ..policy
        };
        let mut calls = 0;
        let r: Result<()> = retry(few, "r", "op", || {
            calls += 1;
            async { Err(Failure::Oci(server(502))) }
        })
        .await;
        assert!(matches!(r, Err(Error::RegistryUnreachable { .. })), "{r:?}");
        assert_eq!(calls, 2);
    }
}
