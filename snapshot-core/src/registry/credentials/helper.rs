//! Docker credential helpers: `docker-credential-<name> get`, found on
//! `PATH`, is given the server URL on standard input and answers
//! `{"ServerURL", "Username", "Secret"}` as JSON on standard output, or fails
//! with its message there ("credentials not found in native keychain" when
//! it has none: not an error, anonymous access).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::{Error, Result};

/// How long a helper may take: one that hangs (waiting for a prompt nobody
/// answers) must not hang the push.
pub(super) const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest helper output kept for a message.
const MESSAGE_MAX: usize = 400;

#[derive(Deserialize)]
struct Answer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Whether a helper's failure message says it has no credentials (the
/// helpers' own `credentials not found in native keychain`, and its
/// variants).
fn is_not_found(message: &str) -> bool {
    message
        .to_ascii_lowercase()
        .contains("credentials not found")
}

fn bounded(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(MESSAGE_MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// Asks helper `name` for `server`'s credentials: `(username, secret)`, or
/// `None` when it has none.
pub(super) fn get(name: &str, server: &str, timeout: Duration) -> Result<Option<(String, String)>> {
    let program = format!("docker-credential-{name}");
    // The name comes from a config file: it names a program on PATH, never
    // a path.
    if name.is_empty() || name.contains('/') || name.chars().any(char::is_control) {
        return Err(Error::RegistryUnauthorized {
            registry: server.to_string(),
            message: format!("credential helper {program:?}: not a valid helper name"),
        });
    }
    run(Path::new(&program), server, timeout)
}

/// [`get`] with the helper program named.
pub(super) fn run(
    program: &Path,
    server: &str,
    timeout: Duration,
) -> Result<Option<(String, String)>> {
    let fail = |message: String| Error::RegistryUnauthorized {
        registry: server.to_string(),
        message: format!("credential helper {}: {message}", program.display()),
    };
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run it (is it on PATH?): {e}")))?;
    // Readers on their own threads: a chatty helper never blocks on a full
    // pipe while we wait for it.
    let pipes: [Option<Box<dyn Read + Send>>; 2] = [
        child.stdout.take().map(|p| Box::new(p) as _),
        child.stderr.take().map(|p| Box::new(p) as _),
    ];
    let readers = pipes.map(|pipe| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    });
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading gives EPIPE: its exit status
        // and output tell what happened.
        let _ = stdin.write_all(server.as_bytes());
    }
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if started.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("no answer within {timeout:?}")));
            }
            Err(e) => return Err(fail(format!("wait: {e}"))),
        }
    };
    let [out, err] = readers.map(|r| r.join().unwrap_or_default());
    let out = String::from_utf8_lossy(&out);
    let err = String::from_utf8_lossy(&err);
    if !status.success() {
        let message = if out.trim().is_empty() { &err } else { &out };
        if is_not_found(message) {
            return Ok(None);
        }
        return Err(fail(format!("{status}: {}", bounded(message))));
    }
    let answer: Answer = serde_json::from_str(out.trim())
        // The output is not quoted: it may hold a secret.
        .map_err(|e| fail(format!("unreadable answer: {e}")))?;
    if answer.username.is_empty() && answer.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some((answer.username, answer.secret)))
}
