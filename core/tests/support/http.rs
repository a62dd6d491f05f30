//! A static HTTP/1.1 file server on a loopback port, with fault injection, for tests of anything that
//! downloads (fetch, resolution, the `kip` binary against a test mirror).
//!
//! It depends on std only, so any test crate can include it with
//! `#[path = "../../core/tests/support/http.rs"] mod http;` (adjust the path). It binds `127.0.0.1:0`, serves
//! the files under one directory, counts requests per path (so a test can assert that a cached resolution did
//! no network I/O), and can be told to misbehave on a path: answer an error status, cut a body short, stall,
//! or drop the connection, a given number of times or forever. Every response closes its connection, which
//! keeps the server simple and makes each request a fresh connection the client must set up.
//!
//! The server stops when the [`TestServer`] is dropped.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A way to misbehave on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status (500, 404, 429, …) with a short text body.
    Status(u16),
    /// Send the real file's headers (its full Content-Length), then only its first `sent` bytes, then close.
    Truncate { sent: usize },
    /// Wait this long before answering normally (a stalled mirror, for timeouts).
    Delay(Duration),
    /// Close the connection without answering.
    Drop,
}

#[derive(Default)]
struct State {
    /// Faults still to apply, per path, in order; then the permanent fault of the path, if any.
    queued: HashMap<String, VecDeque<Fault>>,
    forever: HashMap<String, Fault>,
    requests: HashMap<String, usize>,
}

/// A running server. Dropping it stops the server (connections being answered finish on their own).
pub struct TestServer {
    address: SocketAddr,
    root: PathBuf,
    state: Arc<Mutex<State>>,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Serves the files under `root` on a fresh loopback port.
    pub fn serve(root: &Path) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let address = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State::default()));
        let stopping = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let root = root.to_path_buf();
            let state = Arc::clone(&state);
            let stopping = Arc::clone(&stopping);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let root = root.clone();
                    let state = Arc::clone(&state);
                    std::thread::spawn(move || {
                        let _ = handle(stream, &root, &state);
                    });
                }
            })
        };
        TestServer {
            address,
            root: root.to_path_buf(),
            state,
            stopping,
            acceptor: Some(acceptor),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The directory being served.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `http://127.0.0.1:PORT/` (with the trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.address)
    }

    /// The URL of `path` (with or without a leading slash).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.address, path.trim_start_matches('/'))
    }

    /// Misbehaves with `fault` on the next `times` requests for `path`, then serves it normally. Faults queued
    /// for the same path apply in the order they were queued.
    pub fn fail(&self, path: &str, fault: Fault, times: usize) {
        let mut state = self.state.lock().unwrap();
        let queue = state.queued.entry(normalize(path)).or_default();
        queue.extend(std::iter::repeat_n(fault, times));
    }

    /// Misbehaves with `fault` on every request for `path` (after any queued faults), until [`Self::heal`].
    pub fn fail_always(&self, path: &str, fault: Fault) {
        self.state
            .lock()
            .unwrap()
            .forever
            .insert(normalize(path), fault);
    }

    /// Forgets every fault for `path`.
    pub fn heal(&self, path: &str) {
        let mut state = self.state.lock().unwrap();
        let path = normalize(path);
        state.queued.remove(&path);
        state.forever.remove(&path);
    }

    /// How many requests arrived for `path`, faulty answers included.
    pub fn requests(&self, path: &str) -> usize {
        let state = self.state.lock().unwrap();
        state.requests.get(&normalize(path)).copied().unwrap_or(0)
    }

    /// How many requests arrived in all.
    pub fn total_requests(&self) -> usize {
        self.state.lock().unwrap().requests.values().sum()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor, blocked in accept(), with one last connection it will see and ignore.
        let _ = TcpStream::connect(self.address);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Request paths are counted and matched without the leading slash, query or fragment, percent-decoded.
fn normalize(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    percent_decode(path.trim_start_matches('/'))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' && index + 2 < bytes.len() {
            let digits = std::str::from_utf8(&bytes[index + 1..index + 3]).ok();
            if let Some(byte) = digits.and_then(|digits| u8::from_str_radix(digits, 16).ok()) {
                decoded.push(byte);
                index += 3;
                continue;
            }
        }
        decoded.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

fn handle(stream: TcpStream, root: &Path, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(());
    }
    // Headers are read and ignored: the server answers GET and HEAD for whole files only.
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let target = normalize(parts.next().unwrap_or("/"));

    let fault = {
        let mut state = state.lock().unwrap();
        *state.requests.entry(target.clone()).or_default() += 1;
        let queued = state
            .queued
            .get_mut(&target)
            .and_then(|queue| queue.pop_front());
        queued.or_else(|| state.forever.get(&target).cloned())
    };
    let mut stream = stream;
    match fault {
        Some(Fault::Status(code)) => return respond_text(&mut stream, code, "injected fault\n"),
        Some(Fault::Drop) => return stream.shutdown(Shutdown::Both),
        Some(Fault::Delay(delay)) => std::thread::sleep(delay),
        Some(Fault::Truncate { .. }) | None => {}
    }
    if method != "GET" && method != "HEAD" {
        return respond_text(&mut stream, 405, "only GET and HEAD\n");
    }
    let Some(path) = safe_join(root, &target) else {
        return respond_text(&mut stream, 400, "bad path\n");
    };
    let body = match std::fs::read(&path) {
        Ok(body) => body,
        Err(_) => return respond_text(&mut stream, 404, "not found\n"),
    };
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes())?;
    if method == "HEAD" {
        return stream.flush();
    }
    match fault {
        Some(Fault::Truncate { sent }) => {
            stream.write_all(&body[..sent.min(body.len())])?;
            stream.flush()?;
            // Close hard, so the client sees the connection end before Content-Length bytes arrived.
            stream.shutdown(Shutdown::Both)
        }
        _ => {
            stream.write_all(&body)?;
            stream.flush()?;
            drain_and_close(stream)
        }
    }
}

fn respond_text(stream: &mut TcpStream, code: u16, text: &str) -> std::io::Result<()> {
    let reason = match code {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Injected",
    };
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()?;
    drain_and_close(stream.try_clone()?)
}

/// Closes the write side, then reads until the client closes: closing with unread input would make the
/// kernel send a reset, which can destroy a response the client has not read yet.
fn drain_and_close(mut stream: TcpStream) -> std::io::Result<()> {
    stream.shutdown(Shutdown::Write)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut sink = [0u8; 1024];
    while matches!(stream.read(&mut sink), Ok(read) if read > 0) {}
    Ok(())
}

/// `root/relative`, or `None` when `relative` tries to leave `root`.
fn safe_join(root: &Path, relative: &str) -> Option<PathBuf> {
    let mut path = root.to_path_buf();
    for component in Path::new(relative).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(path)
}
