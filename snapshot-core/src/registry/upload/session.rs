//! The HTTP requests of a blob upload, made by us rather than by the
//! registry client: the client's uploads are monolithic or not resumable,
//! and its read timeout covers a whole request body.
//!
//! Every request is watched for progress instead of timed as a whole: it
//! fails as stalled when no byte of its body could be handed to the
//! connection for `stall`, when the kernel saw no byte it sent acknowledged
//! for `stall` (the TCP user timeout), or when the answer does not come
//! within [`ANSWER_STALLS`] `stall`s after the body, plus as long again as
//! the body took to hand over. A registry's
//! error answer becomes a [`Failure::Answer`] carrying its status and
//! `Retry-After`; a 401 is answered by [`Http::refresh`] (a new token)
//! before it counts as a refusal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::stream::{Stream, StreamExt};
use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::{Client, Reference, RegistryOperation};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, LOCATION, RANGE, RETRY_AFTER};
use reqwest::{Method, Url};
use rustls::pki_types::CertificateDer;

use super::super::auth::{self, Authorization, Negotiator};
use super::super::retry::{Failure, error_chain, parse_retry_after};
use super::super::tls;
use crate::error::Error;

/// How much of an error answer's body is read (registries may answer with
/// whole HTML pages).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// After its body, a request's answer may take this many `stall`s, plus
/// as long as the body took to hand over. Generous, because the bytes
/// handed over may still be queued in socket buffers (megabytes on a slow
/// link, all of a small blob: handed over at once, drained at the link's
/// pace); while they drain, the TCP user timeout (`stall`) watches their
/// acknowledgement, so this bound only has to catch a registry that took
/// everything and never answers.
const ANSWER_STALLS: u32 = 4;

/// The progress of one request: the bytes of its body handed to the
/// connection, and when.
#[derive(Debug)]
pub(super) struct Flow {
    start: Instant,
    len: u64,
    bytes: AtomicU64,
    /// Milliseconds from `start` to the last progress.
    last_ms: AtomicU64,
    /// Milliseconds from `start` to the body's end; `u64::MAX` before.
    done_ms: AtomicU64,
}

impl Flow {
    /// A request whose body is `len` bytes.
    pub(super) fn new(len: u64) -> Arc<Flow> {
        Arc::new(Flow {
            start: Instant::now(),
            len,
            bytes: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            done_ms: AtomicU64::new(if len == 0 { 0 } else { u64::MAX }),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn advance(&self, n: u64) {
        let now = self.now_ms();
        self.last_ms.store(now, Ordering::Relaxed);
        if self.bytes.fetch_add(n, Ordering::Relaxed) + n >= self.len {
            self.done_ms.store(now, Ordering::Relaxed);
        }
    }

    /// When the request counts as stalled if nothing happens meanwhile.
    fn deadline(&self, stall: Duration) -> Instant {
        let ms = |v: u64| Duration::from_millis(v);
        match self.done_ms.load(Ordering::Relaxed) {
            u64::MAX => self.start + ms(self.last_ms.load(Ordering::Relaxed)) + stall,
            // The answer: see ANSWER_STALLS.
            done => self.start + ms(done) * 2 + stall * ANSWER_STALLS,
        }
    }
}

/// A request body: `stream`, counted into `flow` as reqwest takes it.
pub(super) fn body<S>(stream: S, flow: &Arc<Flow>) -> reqwest::Body
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    let flow = flow.clone();
    reqwest::Body::wrap_stream(stream.map(move |r| {
        if let Ok(b) = &r {
            flow.advance(b.len() as u64);
        }
        r
    }))
}

/// A successful answer's headers.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) headers: HeaderMap,
}

impl Answer {
    /// The `Location` header, resolved against `base`.
    pub(super) fn location(&self, base: &Url) -> Option<Url> {
        let v = self.headers.get(LOCATION)?.to_str().ok()?;
        base.join(v).ok()
    }

    /// The end (exclusive) of the bytes the registry has, from a `Range:
    /// 0-N` header (`bytes=0-N` too); `None` without one.
    pub(super) fn range_end(&self) -> Option<u64> {
        let v = self.headers.get(RANGE)?.to_str().ok()?;
        let v = v.trim().trim_start_matches("bytes=");
        let (start, end) = v.split_once('-')?;
        if start.trim() != "0" {
            return None;
        }
        let end: u64 = end.trim().parse().ok()?;
        // `0-0` is what registries say for an empty upload too; reading it
        // as empty at worst re-sends one byte, which the registry refuses
        // (416) and the upload restarts.
        Some(if end == 0 { 0 } else { end + 1 })
    }
}

/// The registry's end of our upload requests.
pub(super) struct Http {
    client: reqwest::Client,
    /// `scheme://host[:port]/`.
    base: Url,
    stall: Duration,
    oci: Client,
    target: Reference,
    negotiator: Negotiator,
    authz: tokio::sync::RwLock<Authorization>,
}

impl Http {
    /// Requests to the target's registry (trusting the push's extra TLS
    /// `roots`), authorized by `negotiator` and handing each new token to
    /// `oci` too.
    pub(super) async fn new(
        scheme: &str,
        oci: Client,
        target: Reference,
        negotiator: Negotiator,
        roots: &[CertificateDer<'static>],
        connect: Duration,
        stall: Duration,
    ) -> Result<Http, Failure> {
        let registry = target.resolve_registry();
        let base = Url::parse(&format!("{scheme}://{registry}/")).map_err(|e| {
            Failure::Fatal(Error::InvalidReference {
                reference: target.whole(),
                reason: format!("registry {registry}: {e}"),
            })
        })?;
        let client = reqwest::Client::builder()
            .tls_certs_merge(tls::reqwest_certificates(roots).map_err(Failure::Fatal)?)
            .connect_timeout(connect)
            .tcp_user_timeout(stall)
            .tcp_keepalive(stall.min(Duration::from_secs(30)))
            .user_agent(concat!("seamless-snapshot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                Failure::Fatal(Error::Internal(format!("HTTP client: {}", error_chain(&e))))
            })?;
        let http = Http {
            client,
            base,
            stall,
            oci,
            target,
            negotiator,
            authz: tokio::sync::RwLock::new(Authorization::Anonymous),
        };
        http.refresh().await?;
        Ok(http)
    }

    /// The registry's base URL.
    pub(super) fn base(&self) -> &Url {
        &self.base
    }

    /// Negotiates access again (a new token after a 401: tokens expire),
    /// for our requests and the registry client's.
    pub(super) async fn refresh(&self) -> Result<(), Failure> {
        let access = self.negotiator.access().await?;
        access
            .install(&self.oci, &self.target, RegistryOperation::Push)
            .await
            .map_err(Failure::Oci)?;
        *self.authz.write().await = access.authorization().clone();
        Ok(())
    }

    /// Tries to mount blob `digest` from repository `from` of the same
    /// registry ([`auth::mount`]).
    pub(super) async fn mount(&self, from: &str, digest: &str) -> bool {
        let authz = self.authz.read().await.clone();
        auth::mount(
            &self.client,
            &self.base,
            &authz,
            self.target.repository(),
            from,
            digest,
        )
        .await
    }

    /// `POST /v2/<repo>/blobs/uploads/`: a new upload session's URL.
    pub(super) async fn start(&self) -> Result<Url, Failure> {
        let url = self
            .base
            .join(&format!("v2/{}/blobs/uploads/", self.target.repository()));
        let url = url.map_err(|e| Failure::Fatal(Error::Internal(format!("upload URL: {e}"))))?;
        let a = self.send(Method::POST, url, &[], None).await?;
        a.location(&self.base)
            .ok_or_else(|| missing_header("POST", "Location"))
    }

    /// `GET` of an upload session: its next URL and how many bytes the
    /// registry has; `None` when the session is gone (404).
    pub(super) async fn status(&self, session: &Url) -> Result<Option<(Url, u64)>, Failure> {
        match self.send(Method::GET, session.clone(), &[], None).await {
            Ok(a) => {
                let next = a.location(&self.base).unwrap_or_else(|| session.clone());
                Ok(Some((next, a.range_end().unwrap_or(0))))
            }
            Err(f) if f.status() == Some(404) => Ok(None),
            Err(f) => Err(f),
        }
    }

    /// `PATCH` of `len` bytes at `offset` of a session.
    pub(super) async fn patch(
        &self,
        session: &Url,
        offset: u64,
        len: u64,
        body: (reqwest::Body, &Arc<Flow>),
    ) -> Result<Answer, Failure> {
        let range = format!("{offset}-{}", offset + len - 1);
        let headers = [
            ("Content-Range", range),
            (CONTENT_LENGTH.as_str(), len.to_string()),
            (CONTENT_TYPE.as_str(), "application/octet-stream".into()),
        ];
        self.send(Method::PATCH, session.clone(), &headers, Some(body))
            .await
    }

    /// The closing `PUT` of a session with the blob's digest, carrying the
    /// blob's last `len` bytes (all of it for a monolithic upload) or none.
    pub(super) async fn finish(
        &self,
        session: &Url,
        digest: &str,
        body: Option<(u64, reqwest::Body, &Arc<Flow>)>,
    ) -> Result<Answer, Failure> {
        let mut url = session.clone();
        url.query_pairs_mut().append_pair("digest", digest);
        let len = body.as_ref().map_or(0, |b| b.0);
        let headers = [
            (CONTENT_LENGTH.as_str(), len.to_string()),
            (CONTENT_TYPE.as_str(), "application/octet-stream".into()),
        ];
        self.send(Method::PUT, url, &headers, body.map(|(_, b, f)| (b, f)))
            .await
    }

    /// One request, watched for progress; an error answer is a failure.
    async fn send(
        &self,
        method: Method,
        url: Url,
        headers: &[(&str, String)],
        body: Option<(reqwest::Body, &Arc<Flow>)>,
    ) -> Result<Answer, Failure> {
        let what = format!("{method} {}", url.path());
        let mut req = self.client.request(method, url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        req = auth::authorize(req, &*self.authz.read().await);
        let flow = match body {
            Some((b, flow)) => {
                req = req.body(b);
                flow.clone()
            }
            None => Flow::new(0),
        };
        let resp = self.watched(req.send(), &flow, &what).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(Answer {
                headers: resp.headers().clone(),
            });
        }
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let url = resp.url().to_string();
        // The error body, bounded, under the same watch.
        let text = self
            .watched(bounded_text(resp), &Flow::new(0), &what)
            .await?;
        let error = match serde_json::from_str::<OciEnvelope>(&text) {
            Ok(envelope) if !envelope.errors.is_empty() => {
                OciDistributionError::RegistryError { envelope, url }
            }
            _ => OciDistributionError::ServerError {
                code: status.as_u16(),
                url,
                message: format!("{what}: {}", text.trim()),
            },
        };
        Err(Failure::Answer {
            status: status.as_u16(),
            error,
            retry_after,
        })
    }

    /// Runs a request until it answers, failing it as stalled when `flow`
    /// shows no progress in time.
    async fn watched<T>(
        &self,
        fut: impl Future<Output = reqwest::Result<T>>,
        flow: &Flow,
        what: &str,
    ) -> Result<T, Failure> {
        let mut fut = std::pin::pin!(fut);
        loop {
            let deadline = flow.deadline(self.stall);
            tokio::select! {
                r = &mut fut => return r.map_err(|e| Failure::Oci(OciDistributionError::RequestError(e))),
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if Instant::now() >= flow.deadline(self.stall) {
                        return Err(Failure::Oci(OciDistributionError::IoError(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "{what}: stalled, no progress for {:?} ({} of {} body bytes sent)",
                                self.stall,
                                flow.bytes.load(Ordering::Relaxed),
                                flow.len
                            ),
                        ))));
                    }
                }
            }
        }
    }
}

/// The start of a response body as text.
async fn bounded_text(resp: reqwest::Response) -> reqwest::Result<String> {
    let mut out = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(b) = s.next().await {
        let b = b?;
        out.extend_from_slice(&b[..b.len().min(MAX_ERROR_BODY - out.len())]);
        if out.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// An upload answer lacking a header the protocol requires.
pub(super) fn missing_header(method: &str, header: &str) -> Failure {
    Failure::Oci(OciDistributionError::SpecViolationError(format!(
        "{method} of an upload answered without a {header} header"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(range: Option<&str>, location: Option<&str>) -> Answer {
        let mut headers = HeaderMap::new();
        if let Some(r) = range {
            headers.insert(RANGE, r.parse().unwrap());
        }
        if let Some(l) = location {
            headers.insert(LOCATION, l.parse().unwrap());
        }
        Answer { headers }
    }

    #[test]
    fn ranges_and_locations() {
        assert_eq!(answer(Some("0-1023"), None).range_end(), Some(1024));
        assert_eq!(answer(Some("bytes=0-99"), None).range_end(), Some(100));
        assert_eq!(answer(Some("0-0"), None).range_end(), Some(0));
        assert_eq!(answer(Some("5-9"), None).range_end(), None);
        assert_eq!(answer(Some("junk"), None).range_end(), None);
        assert_eq!(answer(None, None).range_end(), None);
        let base = Url::parse("http://127.0.0.1:5000/").unwrap();
        let rel = answer(None, Some("/v2/a/b/blobs/uploads/u?_state=x"));
        assert_eq!(
            rel.location(&base).unwrap().as_str(),
            "http://127.0.0.1:5000/v2/a/b/blobs/uploads/u?_state=x"
        );
        let abs = answer(None, Some("https://cdn.example/up/u"));
        assert_eq!(
            abs.location(&base).unwrap().as_str(),
            "https://cdn.example/up/u"
        );
    }

    #[test]
    fn stall_deadlines() {
        let stall = Duration::from_secs(10);
        // No body: the answer within ANSWER_STALLS stalls.
        let f = Flow::new(0);
        assert_eq!(f.deadline(stall), f.start + stall * ANSWER_STALLS);
        // During the body: `stall` after the last progress.
        let f = Flow::new(100);
        f.last_ms.store(3_000, Ordering::Relaxed);
        assert_eq!(f.deadline(stall), f.start + Duration::from_secs(13));
        f.advance(40);
        assert_eq!(f.done_ms.load(Ordering::Relaxed), u64::MAX);
        // After it: as long again as it took, plus the answer's stalls.
        f.advance(60);
        let done = Duration::from_millis(f.done_ms.load(Ordering::Relaxed));
        assert_eq!(
            f.deadline(stall),
            f.start + done * 2 + stall * ANSWER_STALLS
        );
    }
}
