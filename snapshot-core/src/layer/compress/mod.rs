//! The compression stage of a layer build and the blob digest after it: the
//! compressor thread of [`super::pipeline`] takes the tar stream's chunks in
//! order and writes `Encoder/parallel gzip -> HashWriter (blob digest) ->
//! file`.
//!
//! Layout: [`gzip_parallel`] (gzip in independent blocks on worker threads,
//! one standard gzip stream, as pigz), [`zstd`] (zstd's own multi-threaded
//! mode). Invariants: a [`HashWriter`] hashes and counts exactly the bytes its
//! inner writer accepted; the output depends on the tar bytes and the level
//! only, never on the thread count (gzip blocks are cut at fixed offsets;
//! zstd always runs in its multi-threaded mode, whose output does not depend
//! on the number of workers); the gzip header carries no mtime and no name.

mod gzip_parallel;
mod zstd;

pub(super) use gzip_parallel::Block;

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, Sender};

use sha2::{Digest, Sha256};

use super::pipeline::Msg;
use crate::error::{Error, Result};
use crate::types::Compression;

/// Default gzip level (zlib's default).
pub(super) const GZIP_DEFAULT_LEVEL: i32 = 6;
/// Default zstd level (zstd's default).
pub(super) const ZSTD_DEFAULT_LEVEL: i32 = 3;

/// A writer that hashes and counts what goes through it.
pub(super) struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    pub(super) fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    pub(super) fn into_parts(self) -> (Sha256, u64, W) {
        (self.hasher, self.count, self.inner)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        // Only hash what the inner writer accepted.
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// How to compress: the algorithm, a checked level and the worker count.
#[derive(Debug, Clone, Copy)]
pub(super) struct Codec {
    pub(super) compression: Compression,
    pub(super) level: i32,
    pub(super) threads: u32,
}

impl Codec {
    /// Checks `level` (`None`: the algorithm's default) against the
    /// algorithm's range; `threads` is at least 1.
    pub(super) fn new(compression: Compression, level: Option<i32>, threads: u32) -> Result<Self> {
        let (level, range) = match compression {
            Compression::Gzip => (level.unwrap_or(GZIP_DEFAULT_LEVEL), 0..=9),
            Compression::Zstd => (level.unwrap_or(ZSTD_DEFAULT_LEVEL), zstd::level_range()),
            Compression::None => (0, 0..=0),
        };
        if compression != Compression::None && !range.contains(&level) {
            return Err(Error::InvalidArgument(format!(
                "compression level {level} out of range for {compression} ({}..={})",
                range.start(),
                range.end()
            )));
        }
        Ok(Codec {
            compression,
            level,
            threads: threads.max(1),
        })
    }
}

/// Runs the compressor: takes chunks from `rx` until [`Msg::End`], writes
/// the compressed stream to `out` and hands every chunk back on `free` once
/// it is done with it. `workers` is a sender of `rx`, for worker threads'
/// results. Returns `Ok(false)` if the stream was aborted ([`Msg::Abort`]).
pub(super) fn run<W: Write>(
    codec: Codec,
    rx: &Receiver<Msg>,
    workers: Sender<Msg>,
    free: &Sender<Vec<u8>>,
    out: &mut W,
) -> io::Result<bool> {
    match codec.compression {
        Compression::Gzip => gzip_parallel::run(codec.level, codec.threads, rx, workers, free, out),
        Compression::Zstd => {
            drop(workers);
            let mut enc = zstd::encoder(out, codec.level, codec.threads)?;
            if !stream(rx, free, &mut enc)? {
                return Ok(false);
            }
            enc.finish()?;
            Ok(true)
        }
        Compression::None => {
            drop(workers);
            stream(rx, free, out)
        }
    }
}

/// Writes every chunk to `w`, in order, until the end (`true`) or an abort.
fn stream<W: Write>(rx: &Receiver<Msg>, free: &Sender<Vec<u8>>, w: &mut W) -> io::Result<bool> {
    loop {
        match rx.recv() {
            Ok(Msg::Chunk(data)) => {
                w.write_all(&data)?;
                // The walk may have finished and stopped taking buffers.
                let _ = free.send(data);
            }
            Ok(Msg::End) => return Ok(true),
            Ok(Msg::Abort) | Err(_) => return Ok(false),
            Ok(Msg::Block(_)) => {
                return Err(io::Error::other("a gzip block outside parallel gzip"));
            }
        }
    }
}
