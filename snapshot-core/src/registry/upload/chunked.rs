//! One blob's upload: chunked and resumable, or monolithic.
//!
//! Chunked (the default): `POST` opens a session, `PATCH`es carry
//! `chunk_size` bytes each (`Content-Range`), the closing `PUT` names the
//! digest. After a transient error the session is asked (`GET`) how many
//! bytes it has and the upload goes on from there; a session the registry
//! forgot (404, or a range it refuses: 416) starts the blob again. A
//! registry that refuses chunks (400, 405, 415, 501 to a `PATCH`) gets one
//! `PUT` per blob from then on, as does a `chunk_size` of 0; a monolithic
//! upload restarts from its first byte after an error.
//!
//! Every body streams from the blob's source through one [`Cursor`]: a
//! resumed upload reopens the source at the registry's offset only when
//! the cursor is elsewhere (a file seeks; a stream is read up to there).
//! A 401 gets one new token and a retry before it counts as a refusal;
//! every other failure goes to the [`Retrier`], whose budget starts anew
//! whenever the registry acknowledged more of the blob.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use oci_client::errors::OciDistributionError;
use reqwest::Url;

use super::Pusher;
use super::session::{Flow, body, missing_header};
use crate::error::Error;
use crate::image::Descriptor;
use crate::registry::retry::{Failure, Retrier, error_chain};
use crate::registry::source::Origin;

/// A blob's bytes from some offset on, shared by the bodies of successive
/// requests.
pub(super) struct Cursor {
    stream: BoxStream<'static, Result<Bytes, Failure>>,
    /// Offset of the next byte `stream` yields, after `pending`.
    pos: u64,
    /// Read from `stream` but not yet sent.
    pending: Bytes,
}

impl Cursor {
    /// `stream` holds the blob's bytes from `pos` on.
    pub(super) fn new(stream: BoxStream<'static, Result<Bytes, Failure>>, pos: u64) -> Self {
        Cursor {
            stream,
            pos,
            pending: Bytes::new(),
        }
    }

    fn offset(&self) -> u64 {
        self.pos - self.pending.len() as u64
    }
}

/// The upload's state across attempts.
struct State {
    /// The session's next URL and the bytes the registry acknowledged.
    session: Option<(Url, u64)>,
    cursor: Option<Arc<tokio::sync::Mutex<Cursor>>>,
    /// A failure of the blob's source met while a body was sent: the
    /// request's own error only says the body broke.
    source_failure: Arc<Mutex<Option<Failure>>>,
    /// A new token was fetched after a 401 and no bytes were acknowledged
    /// since: another 401 is a refusal.
    refreshed: bool,
}

impl Pusher<'_> {
    /// Uploads one blob, resuming and retrying transient errors;
    /// `progress` holds the bytes of the blob sent so far.
    pub(in crate::registry) async fn upload(
        &self,
        desc: &Descriptor,
        origin: &Origin,
        progress: &Arc<AtomicU64>,
    ) -> crate::error::Result<()> {
        let what = format!("upload blob {}", desc.digest);
        let mut retrier = Retrier::new(self.policy, &self.target_registry, &what);
        let mut st = State {
            session: None,
            cursor: None,
            source_failure: Arc::default(),
            refreshed: false,
        };
        let mut acked_before = 0;
        loop {
            let failure = match self.attempt(desc, origin, &mut st, progress).await {
                Ok(()) => return Ok(()),
                Err(f) => f,
            };
            // The source's own failure, if the body broke because of it.
            let failure = match st.source_failure.lock().ok().and_then(|mut s| s.take()) {
                Some(f) => f,
                None => failure,
            };
            if failure.status() == Some(401) && !st.refreshed {
                tracing::debug!(digest = desc.digest, "401 during an upload: new token");
                st.refreshed = true;
                match self.http.refresh().await {
                    Ok(()) => continue,
                    Err(f) => {
                        retrier.failed(f).await?;
                        continue;
                    }
                }
            }
            let acked = st.session.as_ref().map_or(0, |s| s.1);
            if acked > acked_before {
                retrier.progressed();
            }
            acked_before = acked;
            retrier.failed(failure).await?;
        }
    }

    /// One attempt: from where the registry is to the end, or to a failure.
    async fn attempt(
        &self,
        desc: &Descriptor,
        origin: &Origin,
        st: &mut State,
        progress: &Arc<AtomicU64>,
    ) -> Result<(), Failure> {
        if self.chunk_size == 0 || self.monolithic.load(Ordering::Relaxed) {
            return self.monolithic(desc, origin, st, progress).await;
        }
        let (mut url, mut offset) = match st.session.take() {
            Some((url, acked)) => match self.http.status(&url).await {
                Ok(Some((next, have))) => {
                    tracing::info!(digest = desc.digest, acked, have, "resuming upload");
                    (next, have)
                }
                Ok(None) => {
                    tracing::info!(
                        digest = desc.digest,
                        "upload session gone: restarting the blob"
                    );
                    (self.http.start().await?, 0)
                }
                Err(f) => {
                    st.session = Some((url, acked));
                    return Err(f);
                }
            },
            None => (self.http.start().await?, 0),
        };
        st.session = Some((url.clone(), offset));
        while offset < desc.size {
            let len = self.chunk_size.min(desc.size - offset);
            let flow = Flow::new(len);
            let b = self
                .body(desc, origin, st, offset, len, &flow, progress)
                .await?;
            match self.http.patch(&url, offset, len, (b, &flow)).await {
                Ok(a) => {
                    let end = a.range_end().unwrap_or(offset + len);
                    if end != offset + len {
                        tracing::debug!(
                            offset,
                            len,
                            end,
                            "registry acknowledged a different range"
                        );
                    }
                    url = a
                        .location(self.http.base())
                        .ok_or_else(|| missing_header("PATCH", "Location"))?;
                    offset = end;
                    st.session = Some((url.clone(), offset));
                    st.refreshed = false;
                }
                Err(f) => match self.patch_failed(f, st) {
                    AfterPatch::Retry(f) => return Err(f),
                    AfterPatch::Monolithic => {
                        return self.monolithic(desc, origin, st, progress).await;
                    }
                },
            }
        }
        match self.http.finish(&url, &desc.digest, None).await {
            Ok(_) => Ok(()),
            Err(f) if f.status() == Some(404) => {
                st.session = None;
                Err(session_gone(f))
            }
            Err(f) => Err(f),
        }
    }

    /// What a failed `PATCH` means: the failure to retry (the session kept
    /// to resume, or dropped to restart), or that the registry refuses
    /// chunks.
    fn patch_failed(&self, f: Failure, st: &mut State) -> AfterPatch {
        match f.status() {
            Some(404 | 416) => {
                st.session = None;
                AfterPatch::Retry(session_gone(f))
            }
            Some(400 | 405 | 415 | 501) => {
                tracing::warn!(
                    registry = self.target_registry,
                    error = %f.registry_error().map(|e| error_chain(e)).unwrap_or_default(),
                    "the registry refuses chunked uploads: one PUT per blob from now on"
                );
                self.monolithic.store(true, Ordering::Relaxed);
                st.session = None;
                AfterPatch::Monolithic
            }
            _ => AfterPatch::Retry(f),
        }
    }

    /// One `POST` and one `PUT` with the whole blob.
    async fn monolithic(
        &self,
        desc: &Descriptor,
        origin: &Origin,
        st: &mut State,
        progress: &Arc<AtomicU64>,
    ) -> Result<(), Failure> {
        st.session = None;
        let url = self.http.start().await?;
        let flow = Flow::new(desc.size);
        let b = self
            .body(desc, origin, st, 0, desc.size, &flow, progress)
            .await?;
        self.http
            .finish(&url, &desc.digest, Some((desc.size, b, &flow)))
            .await
            .map(|_| ())
    }

    /// The body of a request carrying the blob's bytes `offset..offset+len`.
    #[allow(clippy::too_many_arguments)] // the upload's parts, each needed
    async fn body(
        &self,
        desc: &Descriptor,
        origin: &Origin,
        st: &mut State,
        offset: u64,
        len: u64,
        flow: &Arc<Flow>,
        progress: &Arc<AtomicU64>,
    ) -> Result<reqwest::Body, Failure> {
        let at = match &st.cursor {
            Some(c) => Some(c.lock().await.offset()),
            None => None,
        };
        if at != Some(offset) {
            let s = self.open_at(desc, origin, offset).await?;
            st.cursor = Some(Arc::new(tokio::sync::Mutex::new(Cursor::new(s, offset))));
        }
        let Some(cursor) = st.cursor.clone() else {
            return Err(Failure::Fatal(Error::Internal("no blob cursor".into())));
        };
        progress.store(offset, Ordering::Relaxed);
        let slot = st.source_failure.clone();
        let progress = progress.clone();
        let size = desc.size;
        let pieces = stream::unfold(len, move |left| {
            let (cursor, slot, progress) = (cursor.clone(), slot.clone(), progress.clone());
            async move {
                if left == 0 {
                    return None;
                }
                let mut c = cursor.lock().await;
                let mut b = if c.pending.is_empty() {
                    match c.stream.next().await {
                        Some(Ok(b)) => {
                            c.pos += b.len() as u64;
                            b
                        }
                        Some(Err(f)) => return Some((Err(broken(&slot, f)), 0)),
                        None => {
                            let f = Failure::Fatal(Error::InvalidArgument(format!(
                                "blob ends at {} bytes, its descriptor says {size}",
                                c.pos
                            )));
                            return Some((Err(broken(&slot, f)), 0));
                        }
                    }
                } else {
                    std::mem::take(&mut c.pending)
                };
                if b.len() as u64 > left {
                    // `left` < b.len(): it fits.
                    c.pending = b.split_off(usize::try_from(left).unwrap_or(usize::MAX));
                }
                progress.store(c.offset(), Ordering::Relaxed);
                let n = b.len() as u64;
                Some((Ok(b), left - n))
            }
        });
        Ok(body(pieces, flow))
    }
}

/// What follows a failed `PATCH`.
enum AfterPatch {
    /// This failure goes to the retrier.
    Retry(Failure),
    /// The registry refuses chunks: a monolithic upload now.
    Monolithic,
}

/// Keeps the source's failure aside; the request gets an I/O error.
fn broken(slot: &Mutex<Option<Failure>>, f: Failure) -> std::io::Error {
    let msg = match &f {
        Failure::Fatal(e) => e.to_string(),
        other => other
            .registry_error()
            .map(|e| error_chain(e))
            .unwrap_or_default(),
    };
    if let Ok(mut s) = slot.lock() {
        s.get_or_insert(f);
    }
    std::io::Error::other(msg)
}

/// A session the registry no longer has: transient, the blob restarts.
fn session_gone(f: Failure) -> Failure {
    let msg = f
        .registry_error()
        .map(|e| error_chain(e))
        .unwrap_or_default();
    Failure::Oci(OciDistributionError::IoError(std::io::Error::other(
        format!("upload session lost ({msg}): restarting the blob"),
    )))
}
