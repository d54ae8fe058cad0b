//! A TCP proxy for fault injection in store tests: forwards 127.0.0.1 traffic to an
//! upstream port and can swallow the response of the next N connections after the
//! upstream has answered (the request took effect, the client sees a dropped
//! connection): the "ambiguous failure" of a PUT.
//!
//! It can also strip `If-None-Match`/`If-Match` request headers, turning a server
//! that does not check signatures (moto) into one that ignores conditional writes
//! (like Garage).
//!
//! Assumes one HTTP request per connection (attohttpc, used by rust-s3's sync
//! flavour, does not pool connections).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// The running proxy; stops accepting on drop.
pub struct FaultProxy {
    port: u16,
    drop_responses: Arc<AtomicU32>,
    strip_conditional: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Proxy 127.0.0.1:<new port> to 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let drop_responses = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let strip_conditional = Arc::new(AtomicBool::new(false));
        let (d, st, strip) = (
            drop_responses.clone(),
            stop.clone(),
            strip_conditional.clone(),
        );
        thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let swallow = d
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                let strip = strip.load(Ordering::SeqCst);
                thread::spawn(move || serve(client, upstream, swallow, strip));
            }
        });
        Self {
            port,
            drop_responses,
            strip_conditional,
            stop,
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Swallow the responses of the next `n` connections.
    pub fn drop_next_responses(&self, n: u32) {
        self.drop_responses.store(n, Ordering::SeqCst);
    }

    /// Remove `If-None-Match` and `If-Match` from the requests of new connections.
    pub fn strip_conditional_headers(&self, on: bool) {
        self.strip_conditional.store(on, Ordering::SeqCst);
    }

    /// Responses still to be swallowed.
    pub fn pending_drops(&self) -> u32 {
        self.drop_responses.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Read the request head (through the blank line) from `r`; returns it and any
/// body bytes read past it.
fn read_head(r: &mut TcpStream) -> (Vec<u8>, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return (buf, rest);
        }
        match r.read(&mut chunk) {
            Ok(0) | Err(_) => return (buf, Vec::new()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn strip_headers(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    text.split_inclusive("\r\n")
        .filter(|line| {
            let l = line.to_ascii_lowercase();
            !(l.starts_with("if-none-match:") || l.starts_with("if-match:"))
        })
        .collect::<String>()
        .into_bytes()
}

fn serve(client: TcpStream, upstream: u16, swallow: bool, strip: bool) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    thread::spawn(move || {
        if strip {
            let (head, rest) = read_head(&mut c_read);
            if s_write.write_all(&strip_headers(&head)).is_err()
                || s_write.write_all(&rest).is_err()
            {
                return;
            }
        }
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let mut server = server;
    let mut client = client;
    if swallow {
        // Wait for the first bytes of the answer (the request was processed), then
        // drop both connections without passing anything on.
        let _ = server.set_read_timeout(Some(Duration::from_secs(10)));
        let mut buf = [0u8; 1];
        let _ = server.read(&mut buf);
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
        return;
    }
    let mut buf = [0u8; 64 * 1024];
    loop {
        match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if client.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = client.shutdown(Shutdown::Write);
}
