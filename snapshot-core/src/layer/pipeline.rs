//! The build pipeline: the walk (the calling thread: reading files, writing
//! tar, hashing the tar for the diff id) fills fixed-size chunks; a
//! compressor thread (with its own workers for gzip, libzstd's for zstd)
//! compresses them in order, hashes the blob for its digest and writes it.
//! Reading, compressing and writing overlap.
//!
//! Invariants: chunks come from a pool of at most [`pool_size`] buffers and
//! go back to it once their bytes are written, so memory is bounded whatever
//! the layer's size; the compressor writes the end of the stream only after
//! the walk succeeded ([`Msg::End`]); if the walk fails or panics it gets
//! [`Msg::Abort`] and stops; if the compressor fails the walk's next write
//! fails and the compressor's error is the one returned.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};

use sha2::{Digest, Sha256};

use super::compress::{self, Codec, HashWriter};
use crate::error::{Error, IoContext, Result};

/// Size of a chunk of the tar stream (and of a parallel gzip block, as pigz).
pub(super) const CHUNK: usize = 128 * 1024;

/// Messages to the compressor thread.
#[derive(Debug)]
pub(super) enum Msg {
    /// The next chunk of the tar stream.
    Chunk(Vec<u8>),
    /// A parallel gzip block from a worker.
    Block(compress::Block),
    /// The tar stream is complete.
    End,
    /// The walk failed: discard everything.
    Abort,
}

/// How many chunk buffers may exist: enough to keep every worker busy with
/// some queued behind them.
fn pool_size(threads: u32) -> usize {
    4 * threads as usize + 4
}

/// The tar side of the pipeline: hashes and counts the tar stream and sends
/// it on in chunks.
pub(super) struct ChunkWriter {
    tx: Sender<Msg>,
    free: Receiver<Vec<u8>>,
    allocated: usize,
    pool: usize,
    cur: Vec<u8>,
    hasher: Sha256,
    count: u64,
    ended: bool,
}

fn stopped() -> io::Error {
    io::Error::other("the compressor stopped")
}

impl ChunkWriter {
    /// Sends the current chunk and takes an empty one from the pool.
    fn send_cur(&mut self) -> io::Result<()> {
        let next = match self.free.try_recv() {
            Ok(b) => b,
            Err(TryRecvError::Empty) if self.allocated < self.pool => {
                self.allocated += 1;
                Vec::with_capacity(CHUNK)
            }
            // Wait for the compressor to finish with one.
            Err(TryRecvError::Empty) => self.free.recv().map_err(|_| stopped())?,
            Err(TryRecvError::Disconnected) => return Err(stopped()),
        };
        let full = std::mem::replace(&mut self.cur, next);
        self.cur.clear();
        self.tx.send(Msg::Chunk(full)).map_err(|_| stopped())
    }

    /// Sends the last chunk and the end of the stream; returns the tar's
    /// hash and size.
    fn finish(&mut self) -> io::Result<(Sha256, u64)> {
        if !self.cur.is_empty() {
            let last = std::mem::take(&mut self.cur);
            self.tx.send(Msg::Chunk(last)).map_err(|_| stopped())?;
        }
        self.tx.send(Msg::End).map_err(|_| stopped())?;
        self.ended = true;
        Ok((std::mem::take(&mut self.hasher), self.count))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.cur.len());
        self.cur.extend_from_slice(&buf[..n]);
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        if self.cur.len() == CHUNK {
            self.send_cur()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ChunkWriter {
    fn drop(&mut self) {
        if !self.ended {
            // The compressor may be gone already.
            let _ = self.tx.send(Msg::Abort);
        }
    }
}

/// What the pipeline produced.
pub(super) struct Built {
    /// The blob file, flushed (not yet fsync'ed).
    pub(super) file: File,
    pub(super) blob_hash: Sha256,
    pub(super) size: u64,
    pub(super) tar_hash: Sha256,
    pub(super) uncompressed_size: u64,
    pub(super) entries: u64,
}

/// Runs `walk` (which writes the whole tar stream and returns its entry
/// count) on this thread and the compressor on another, writing the blob to
/// `file` (at `out`, for messages).
pub(super) fn run(
    file: File,
    out: &Path,
    codec: Codec,
    walk: impl FnOnce(&mut ChunkWriter) -> Result<u64>,
) -> Result<Built> {
    let (tx, rx) = mpsc::channel();
    let (free_tx, free_rx) = mpsc::channel();
    let workers = tx.clone();
    std::thread::scope(|s| {
        let compressor = std::thread::Builder::new()
            .name("layer-compress".into())
            .spawn_scoped(s, move || -> io::Result<Option<(Sha256, u64, File)>> {
                let mut blob = HashWriter::new(BufWriter::with_capacity(1 << 20, file));
                let ended = compress::run(codec, &rx, workers, &free_tx, &mut blob)?;
                if !ended {
                    return Ok(None);
                }
                let (hash, size, buf) = blob.into_parts();
                let file = buf.into_inner().map_err(|e| e.into_error())?;
                Ok(Some((hash, size, file)))
            })
            .at("spawn compressor for", out)?;
        let mut cw = ChunkWriter {
            tx,
            free: free_rx,
            allocated: 1,
            pool: pool_size(codec.threads),
            cur: Vec::with_capacity(CHUNK),
            hasher: Sha256::new(),
            count: 0,
            ended: false,
        };
        let walked = walk(&mut cw).and_then(|entries| {
            let (tar_hash, n) = cw.finish().at("write", out)?;
            Ok((entries, tar_hash, n))
        });
        // Sends Abort if the walk failed.
        drop(cw);
        let compressed = compressor
            .join()
            .map_err(|_| Error::Internal("layer compressor panicked".into()))?
            .at("write", out);
        // The compressor's own error explains a walk that could not write.
        let compressed = compressed?;
        let (entries, tar_hash, uncompressed_size) = walked?;
        let Some((blob_hash, size, file)) = compressed else {
            return Err(Error::Internal("layer compressor aborted".into()));
        };
        Ok(Built {
            file,
            blob_hash,
            size,
            tar_hash,
            uncompressed_size,
            entries,
        })
    })
}
