//! The compression stage of a layer build and the digests around it:
//! `tar bytes -> HashWriter (diff id) -> Encoder -> HashWriter (blob digest)
//! -> file`.
//!
//! Invariants: a [`HashWriter`] hashes and counts exactly the bytes its inner
//! writer accepted; the gzip header carries no mtime and no name, so the same
//! tar always gives the same blob.

use std::io::{self, Write};

use sha2::{Digest, Sha256};

use crate::types::Compression;

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

/// The compressor in the middle of the pipeline.
pub(super) enum Encoder<W: Write> {
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    None(W),
}

impl<W: Write> Encoder<W> {
    pub(super) fn new(c: Compression, w: W) -> io::Result<Self> {
        Ok(match c {
            // flate2's gzip header has mtime 0 and no name: deterministic.
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::default(),
            )),
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(w, 3)?),
            Compression::None => Encoder::None(w),
        })
    }

    pub(super) fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::None(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::None(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::None(w) => w.flush(),
        }
    }
}
