//! Starting the embedded watchdog program: written to a sealed memfd and
//! started with `posix_spawn` (glibc: `clone(CLONE_VM | CLONE_VFORK)`, so
//! the committer's page tables are never write-protected for copy-on-write,
//! unlike `fork`), with an empty environment, the socket as its fd 0 and the
//! thaw file as its fd 1.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawn};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::signal::SigSet;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::unistd::Pid;

/// The watchdog program (`helper.c`), compiled for the target by `build.rs`.
pub(super) static PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seamless-watchdog"));

/// The name the program runs under (`argv[0]`, and the memfd's name).
const NAME: &str = "seamless-watchdog";

/// Spawns `image` as the watchdog of `thaw` (see `helper.c` for its
/// arguments); returns its pid and our end of its socket. The caller waits
/// for its ready byte.
pub(super) fn spawn_program(
    image: &[u8],
    thaw: &File,
    thaw_bytes: &[u8],
    deadline: &libc::timespec,
) -> io::Result<(Pid, OwnedFd)> {
    let exe = sealed_memfd(image)?;
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    // Above the standard fds, so that the dup2s below neither clobber one
    // another nor hit `dup2(fd, fd)`, which would keep FD_CLOEXEC.
    let theirs = dup_above_stdio(&theirs)?;
    let thaw = dup_above_stdio(thaw)?;
    let null = dup_above_stdio(&File::options().write(true).open("/dev/null")?)?;

    let mut actions = PosixSpawnFileActions::init()?;
    actions.add_dup2(theirs.as_raw_fd(), 0)?;
    actions.add_dup2(thaw.as_raw_fd(), 1)?;
    actions.add_dup2(null.as_raw_fd(), 2)?;
    let mut attr = PosixSpawnAttr::init()?;
    // Nothing of the caller's signal mask or handlers carries over.
    attr.set_sigmask(&SigSet::empty())?;
    attr.set_sigdefault(&SigSet::all())?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )?;

    let cstr = |s: String| CString::new(s).map_err(io::Error::other);
    let args = [
        cstr(NAME.to_owned())?,
        cstr(deadline.tv_sec.to_string())?,
        cstr(deadline.tv_nsec.to_string())?,
        CString::new(thaw_bytes).map_err(io::Error::other)?,
    ];
    let env: [CString; 0] = [];
    // The memfd is close-on-exec: the kernel opens the program before it
    // closes such fds, so the path stays valid for the exec itself.
    let path = format!("/proc/self/fd/{}", exe.as_raw_fd());
    let pid = posix_spawn(path.as_str(), &actions, &attr, &args, &env)?;
    Ok((pid, ours))
}

/// A close-on-exec memfd holding `image`, sealed against any change.
fn sealed_memfd(image: &[u8]) -> io::Result<File> {
    let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    // Kernels 6.3+ with vm.memfd_noexec=1 make a memfd non-executable unless
    // asked; older kernels do not know the flag (EINVAL).
    let exec = MFdFlags::from_bits_retain(libc::MFD_EXEC);
    let fd = match memfd_create(NAME, flags | exec) {
        Err(Errno::EINVAL) => memfd_create(NAME, flags)?,
        other => other?,
    };
    let mut file = File::from(fd);
    file.write_all(image)?;
    fcntl(
        &file,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SEAL
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_WRITE,
        ),
    )?;
    Ok(file)
}

/// A close-on-exec duplicate of `fd` numbered 3 or above.
fn dup_above_stdio(fd: &impl AsFd) -> io::Result<OwnedFd> {
    let raw = fcntl(fd.as_fd(), FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}
