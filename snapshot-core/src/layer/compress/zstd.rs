//! zstd in its multi-threaded mode (libzstd's `nbWorkers`): the library cuts
//! the stream into jobs and compresses them on its own threads while the
//! caller keeps feeding it.
//!
//! Invariant: the multi-threaded mode is used for every thread count,
//! including 1, because its output does not depend on the number of workers
//! but differs from the single-threaded mode's: the same tree and level give
//! the same blob on any machine.

use std::io::{self, Write};
use std::ops::RangeInclusive;

/// The levels accepted (1 to 22; zstd's "fast" negative levels are not
/// offered).
pub(super) fn level_range() -> RangeInclusive<i32> {
    1..=*::zstd::compression_level_range().end()
}

/// The size of one libzstd job (its default at level 3 is 8 MiB). libzstd
/// keeps about two jobs' buffers per worker plus a few more: at 2 MiB the
/// encoder stays well below the build's memory bound on any core count,
/// for a ratio within a fraction of a percent.
const JOB_SIZE: u32 = 2 << 20;

/// An encoder at `level` with `threads` workers.
pub(super) fn encoder<W: Write>(
    w: W,
    level: i32,
    threads: u32,
) -> io::Result<::zstd::stream::write::Encoder<'static, W>> {
    let mut e = ::zstd::stream::write::Encoder::new(w, level)?;
    e.multithread(threads)?;
    e.set_parameter(::zstd::stream::raw::CParameter::JobSize(JOB_SIZE))?;
    Ok(e)
}
