//! A fault-injecting HTTP/1.1 reverse proxy, to put in front of a real
//! registry: it resets connections in the middle of an upload body, answers
//! bursts of errors (with `Retry-After`), slows request bodies down to a
//! byte rate, and logs every request (method, path, `Content-Range`, what
//! was answered) for the test to assert on.
//!
//! Store and forward: a request (head and whole body) is read from the
//! client first, then either answered by a fault or sent upstream on a
//! fresh connection (`Connection: close`), whose whole answer goes back to
//! the client, which is then closed. So a reset body never reaches the
//! registry, which keeps the upload exactly where it last acknowledged it.
//! The `Host` header is kept: the registry's `Location`s point back here.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// When it arrived, since the proxy started.
    pub at: Duration,
    /// `GET`, `PATCH`...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query (`digest=...` on a closing `PUT`).
    pub query: String,
    /// The `Content-Range` header.
    pub content_range: Option<String>,
    /// The answer's status; `None` when the connection was reset.
    pub status: Option<u16>,
    /// The fault injected, if any.
    pub fault: Option<String>,
    /// From its arrival to its answer (or reset).
    pub took: Duration,
}

impl LogEntry {
    /// The start of the `Content-Range` (`a` of `a-b`).
    pub fn range_start(&self) -> Option<u64> {
        range_start(self.content_range.as_deref()?)
    }

    /// Whether this is a request of a blob upload (`/blobs/uploads/`).
    pub fn is_upload(&self) -> bool {
        self.path.contains("/blobs/uploads/")
    }

    /// Whether this puts a manifest.
    pub fn is_manifest_put(&self) -> bool {
        self.method == "PUT" && self.path.contains("/manifests/")
    }
}

fn range_start(r: &str) -> Option<u64> {
    r.trim()
        .trim_start_matches("bytes ")
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// An error answer for requests that match.
#[derive(Debug, Clone)]
struct StatusFault {
    method: String,
    path_contains: String,
    status: u16,
    retry_after: Option<String>,
    /// Matching requests let through before the burst.
    skip: usize,
    /// Answers left in the burst.
    count: usize,
}

#[derive(Debug, Default)]
struct Faults {
    statuses: Vec<StatusFault>,
    /// Reset the upload body that crosses this byte of a blob, once.
    reset_at: Option<u64>,
    /// Request bodies are read at most this fast.
    rate: Option<u64>,
}

#[derive(Debug)]
struct Shared {
    upstream: String,
    start: Instant,
    faults: Mutex<Faults>,
    log: Mutex<Vec<LogEntry>>,
    stop: AtomicBool,
}

/// The proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: String,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy on a free loopback port in front of `upstream` (`host:port`).
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            start: Instant::now(),
            faults: Mutex::default(),
            log: Mutex::default(),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let s = s.clone();
                        std::thread::spawn(move || handle(conn, &s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultProxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Answers `status` (with `Retry-After: retry_after` when given) to
    /// `count` requests whose method is `method` and whose path contains
    /// `path_contains`, after letting `skip` of them through.
    pub fn fail(
        &self,
        method: &str,
        path_contains: &str,
        status: u16,
        retry_after: Option<&str>,
        skip: usize,
        count: usize,
    ) {
        self.faults().statuses.push(StatusFault {
            method: method.to_string(),
            path_contains: path_contains.to_string(),
            status,
            retry_after: retry_after.map(str::to_string),
            skip,
            count,
        });
    }

    /// Resets, once, the connection of the upload body (`PATCH`, or a
    /// `PUT` with a body) that carries byte `offset` of a blob, once the
    /// bytes before it arrived. Nothing of that request reaches the registry.
    pub fn reset_at(&self, offset: u64) {
        self.faults().reset_at = Some(offset);
    }

    /// Reads request bodies at most `bytes_per_sec` fast (`None`: at once).
    pub fn limit_rate(&self, bytes_per_sec: Option<u64>) {
        self.faults().rate = bytes_per_sec;
    }

    /// The requests so far.
    pub fn log(&self) -> Vec<LogEntry> {
        self.shared
            .log
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// The log, one request a line, for assertion messages.
    pub fn log_text(&self) -> String {
        self.log()
            .iter()
            .map(|e| {
                format!(
                    "{:>7.3}s +{:.3}s {} {}{}{} -> {}{}\n",
                    e.at.as_secs_f64(),
                    e.took.as_secs_f64(),
                    e.method,
                    e.path,
                    if e.query.contains("digest=") {
                        "?digest=…"
                    } else {
                        ""
                    },
                    e.content_range
                        .as_deref()
                        .map(|r| format!(" [{r}]"))
                        .unwrap_or_default(),
                    e.status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "reset".into()),
                    e.fault
                        .as_deref()
                        .map(|f| format!(" ({f})"))
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.shared.faults.lock().expect("proxy faults lock")
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// A parsed request head.
struct Head {
    method: String,
    target: String,
    /// Header lines, verbatim, without `Connection`.
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_head(r: &mut BufReader<TcpStream>) -> Option<Head> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).ok()?;
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        if !k.eq_ignore_ascii_case("connection") {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Some(Head {
        method,
        target,
        headers,
    })
}

/// Reads `n` body bytes at `rate`; stops early (returning what it has)
/// when `stop_at` bytes arrived.
fn read_body(
    r: &mut BufReader<TcpStream>,
    n: u64,
    rate: Option<u64>,
    stop_at: Option<u64>,
) -> std::io::Result<Vec<u8>> {
    let want = stop_at.unwrap_or(n).min(n);
    let mut out = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
    let start = Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    while (out.len() as u64) < want {
        let left = usize::try_from(want - out.len() as u64).unwrap_or(usize::MAX);
        let cap = buf.len();
        let k = r.read(&mut buf[..left.min(cap)])?;
        if k == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        out.extend_from_slice(&buf[..k]);
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(out.len() as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    Ok(out)
}

/// Reads a `Transfer-Encoding: chunked` body whole.
fn read_chunked(r: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l)?;
        let size = usize::from_str_radix(l.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        let mut chunk = vec![0u8; size + 2];
        r.read_exact(&mut chunk)?;
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&chunk[..size]);
    }
}

/// Closes the connection (both of its handles) with a TCP reset:
/// `SO_LINGER` 0, then close.
fn reset(conn: TcpStream, reader: BufReader<TcpStream>) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a `linger` of the size passed.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(reader);
    drop(conn);
}

fn handle(conn: TcpStream, s: &Shared) {
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut r = BufReader::new(read_half);
    let Some(head) = read_head(&mut r) else {
        return;
    };
    let (path, query) = match head.target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (head.target.clone(), String::new()),
    };
    let mut entry = LogEntry {
        at: s.start.elapsed(),
        method: head.method.clone(),
        path: path.clone(),
        query,
        content_range: head.header("Content-Range").map(str::to_string),
        status: None,
        fault: None,
        took: Duration::ZERO,
    };
    let len: u64 = head
        .header("Content-Length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .header("Transfer-Encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));

    // Which fault, decided when the request arrives.
    let (status_fault, reset_after, rate) = {
        let mut f = s.faults.lock().expect("proxy faults lock");
        // Every matching rule counts the request; the first due answers.
        let mut hit = None;
        for sf in f.statuses.iter_mut() {
            if sf.count > 0 && sf.method == head.method && path.contains(&sf.path_contains) {
                if sf.skip > 0 {
                    sf.skip -= 1;
                } else if hit.is_none() {
                    sf.count -= 1;
                    hit = Some((sf.status, sf.retry_after.clone()));
                }
            }
        }
        let blob_start = if head.method == "PATCH" {
            entry.range_start().unwrap_or(0)
        } else {
            0
        };
        let mut reset_after = None;
        if hit.is_none()
            && path.contains("/blobs/uploads/")
            && matches!(head.method.as_str(), "PATCH" | "PUT")
            && len > 0
            && let Some(at) = f.reset_at
            && blob_start <= at
            && at < blob_start + len
        {
            f.reset_at = None;
            reset_after = Some(at - blob_start);
        }
        (hit, reset_after, f.rate)
    };

    let body = if chunked {
        read_chunked(&mut r)
    } else {
        read_body(&mut r, len, rate, reset_after)
    };
    let log = |mut e: LogEntry| {
        e.took = s.start.elapsed().saturating_sub(e.at);
        if let Ok(mut l) = s.log.lock() {
            l.push(e);
        }
    };
    let Ok(body) = body else {
        entry.fault = Some("client went away".into());
        log(entry);
        return;
    };
    let mut out = conn;
    if let Some(after) = reset_after {
        entry.fault = Some(format!("reset after {after} body bytes"));
        log(entry);
        reset(out, r);
        return;
    }
    if let Some((status, retry_after)) = status_fault {
        let body = format!(
            "{{\"errors\":[{{\"code\":\"{}\",\"message\":\"injected by the test proxy\"}}]}}",
            match status {
                401 => "UNAUTHORIZED",
                403 => "DENIED",
                404 => "NAME_UNKNOWN",
                400 => "DIGEST_INVALID",
                429 => "TOOMANYREQUESTS",
                _ => "UNAVAILABLE",
            }
        );
        let mut answer = format!(
            "HTTP/1.1 {status} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if let Some(ra) = &retry_after {
            answer.push_str(&format!("Retry-After: {ra}\r\n"));
        }
        answer.push_str("\r\n");
        answer.push_str(&body);
        let _ = out.write_all(answer.as_bytes());
        entry.status = Some(status);
        entry.fault = Some(format!(
            "injected {status}{}",
            retry_after
                .map(|r| format!(", Retry-After: {r}"))
                .unwrap_or_default()
        ));
        log(entry);
        return;
    }

    // Forward.
    let answer = (|| -> std::io::Result<Vec<u8>> {
        let mut up = TcpStream::connect(&s.upstream)?;
        let mut req = format!("{} {} HTTP/1.1\r\n", head.method, head.target);
        for (k, v) in &head.headers {
            if k.eq_ignore_ascii_case("transfer-encoding") {
                continue;
            }
            if chunked && k.eq_ignore_ascii_case("content-length") {
                continue;
            }
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if chunked {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("Connection: close\r\n\r\n");
        up.write_all(req.as_bytes())?;
        up.write_all(&body)?;
        let mut answer = Vec::new();
        up.read_to_end(&mut answer)?;
        Ok(answer)
    })();
    match answer {
        Ok(a) => {
            entry.status = std::str::from_utf8(&a[..a.len().min(12)])
                .ok()
                .and_then(|l| l.get(9..12))
                .and_then(|c| c.parse().ok());
            let _ = out.write_all(&a);
        }
        Err(e) => {
            entry.fault = Some(format!("upstream: {e}"));
            reset(out, r);
            log(entry);
            return;
        }
    }
    log(entry);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_start() {
        assert_eq!(range_start("0-1023"), Some(0));
        assert_eq!(range_start("bytes 4096-8191"), Some(4096));
        assert_eq!(range_start("x"), None);
    }
}
