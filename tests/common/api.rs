//! The allocator as a child process, and the smallest HTTP/1.1 client its API needs, from any
//! loopback source address (a second caller is another 127.0.0.x).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `veil allocator` child process, killed on drop.
pub struct Allocator(pub Child);

impl Drop for Allocator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Allocator {
    /// Starts `veil allocator --config <config>`; waits (15 s at most) until `listen` accepts.
    pub fn start(config: &Path, listen: SocketAddr) -> Allocator {
        let a = Allocator(
            Command::new(env!("CARGO_BIN_EXE_veil"))
                .args(["allocator", "--config"])
                .arg(config)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(listen).is_err() {
            assert!(Instant::now() < deadline, "allocator not listening in 15 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        a
    }
}

/// A minimal HTTP/1.1 request; returns (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, String) {
    http_from("127.0.0.1".parse().unwrap(), addr, method, path, key, body)
}

/// [`http`] from the source address `from` (a loopback one).
pub fn http_from(
    from: IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, String) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(from, 0).into()).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Parses a JSON body, naming it when it is not JSON.
pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}
