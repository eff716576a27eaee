//! What an active prober who holds no credential gets from veil's shared TLS port, side by side
//! with what it gets from the site itself (Debian's nginx, TLS 1.2 and 1.3, two TLS 1.3 session
//! tickets, a 3 s header timeout), probed with a client we did not write (`openssl s_client`)
//! and with raw sockets: the handshake on any ALPN and SNI, junk after it, silence before and
//! after it, a half-closed client. In `compat` mode the one named difference is an offer of
//! `stun.turn` alone, which veil selects and nginx refuses; in `strict` mode that one is gone too,
//! STUN without the issued nonce gets the site's answer, and a native client with it allocates.
//! Needs nginx and openssl (.ci/run installs them).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::TempDir;
use common::site::Nginx;
use veil_relay::proto::auth;
use veil_relay::proto::stun::{Class, Integrity, Writer, attr, method};

/// The site's settings that matter to a prober: both TLS versions, nginx's default of two TLS
/// 1.3 tickets (kept even with `ssl_session_tickets off`), a short header timeout for the test.
const SITE_TLS: &str = "ssl_protocols TLSv1.2 TLSv1.3; client_header_timeout 3s;";

struct Shared {
    _relay: common::Relay,
    site: Nginx,
    tls: SocketAddr,
    cert: PathBuf,
    _dir: TempDir,
}

fn shared_port(ports: &str, mode: &str) -> Shared {
    common::require("openssl");
    let dir = std::env::temp_dir().join(format!("veil-probe-{}-{mode}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (direct, behind) = (common::free_tcp_addr(), common::free_tcp_addr());
    let set = format!(
        "tls.site={{upstream: '{behind}', tls: true, proxy_protocol: v2, mode: {mode}, \
         tls13_tickets: 2}}"
    );
    let (relay, _tcp, tls) = common::start_stream_relay(
        ports,
        &[
            "--set",
            &set,
            "--set",
            "tls.allow_tls12=true",
            "--allow-peer",
            "127.0.0.0/8",
        ],
    );
    let cert = common::stream_relay_cert(ports);
    let key = cert.with_file_name("key.pem");
    let site = Nginx::start(&dir, (&cert, &key), direct, behind, SITE_TLS);
    Shared {
        _relay: relay,
        site,
        tls,
        cert,
        _dir: TempDir(dir),
    }
}

/// What `openssl s_client -msg -showcerts` saw of a handshake.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    /// The server's messages in order (record kind and handshake type, alerts with their
    /// description), without lengths.
    messages: Vec<String>,
    /// Negotiated parameters: version and cipher, ALPN, key exchange group, signature.
    facts: Vec<String>,
    /// The certificate chain, PEM.
    chain: String,
    /// Lengths of the server's messages, for the report (not compared).
    lengths: Vec<String>,
}

fn s_client(at: SocketAddr, args: &str) -> Seen {
    // The client stays a second so that post-handshake messages (tickets) arrive.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "sleep 1 | timeout 10 openssl s_client -connect {at} -msg -showcerts {args} 2>&1"
        ))
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut seen = Seen::default();
    let mut in_cert = false;
    for line in text.lines() {
        if line.starts_with("-----BEGIN CERTIFICATE") {
            in_cert = true;
        }
        if in_cert {
            seen.chain.push_str(line);
            seen.chain.push('\n');
        }
        if line.starts_with("-----END CERTIFICATE") {
            in_cert = false;
        }
        if let Some(m) = line.strip_prefix("<<< ") {
            if m.contains("RecordHeader") || m.contains("InnerContent") {
                continue;
            }
            // "TLS 1.3, Handshake [length 007a], ServerHello"
            let kind = m.split_once(" [length ").map_or(m.to_string(), |(a, b)| {
                let (len, rest) = b.split_once(']').unwrap_or((b, ""));
                seen.lengths
                    .push(format!("{}{rest}:{len}", a.trim_start_matches("TLS ")));
                format!("{a}{rest}")
            });
            seen.messages.push(kind);
        }
        for key in [
            "New, ",
            "ALPN protocol",
            "No ALPN",
            "Server Temp Key",
            "Peer signature type",
            "Peer signing digest",
            "Verify return code",
        ] {
            if line.trim_start().starts_with(key) {
                seen.facts.push(line.trim().to_string());
            }
        }
    }
    seen
}

/// Sends `bytes` on a fresh TCP connection (then half-closes it when `fin`), reads until the
/// server closes or 10 s pass: what came back and when the connection ended.
fn raw(at: SocketAddr, bytes: &[u8], fin: bool) -> (Vec<u8>, Duration) {
    let t0 = Instant::now();
    let mut c = TcpStream::connect(at).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(bytes).unwrap();
    if fin {
        c.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    (out, t0.elapsed())
}

/// A TLS connection (SNI localhost, `alpn`) that sends `bytes` after the handshake (nothing:
/// stays silent) and reads until the server closes: what came back, whether the server sent a
/// close_notify, and how long after the handshake the connection ended.
fn tls_exchange(
    at: SocketAddr,
    cert: &Path,
    alpn: &[&[u8]],
    bytes: &[u8],
) -> (Vec<u8>, bool, Duration) {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn =
        rustls::ClientConnection::new(common::stream::tls_client_config(cert, alpn), name).unwrap();
    let tcp = TcpStream::connect(at).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).expect("handshake");
    }
    let t0 = Instant::now();
    if !bytes.is_empty() {
        s.write_all(bytes).unwrap();
        s.flush().unwrap();
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let notified = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (out, notified, t0.elapsed())
}

/// An HTTP answer without its Date header (the one line that differs between two requests).
fn undated(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .lines()
        .filter(|l| !l.starts_with("Date: "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A Binding request, as a prober who speaks STUN sends it first.
fn binding() -> Vec<u8> {
    let mut buf = [0u8; 64];
    let w = Writer::new(&mut buf, method::BINDING, Class::Request, &[7; 12]).unwrap();
    let n = w.finish();
    buf[..n].to_vec()
}

/// An Allocate signed with a fresh credential of `secret` and `nonce` (None: the credential's
/// issued nonce), in realm `veil` (the relay's default).
fn allocate(secret: &str, nonce: Option<&[u8]>) -> Vec<u8> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (user, pass) = auth::mint(secret.as_bytes(), now + 600, Some("native"));
    let issued = auth::credential_nonce(secret.as_bytes(), &user);
    let mut buf = [0u8; 512];
    let mut w = Writer::new(&mut buf, method::ALLOCATE, Class::Request, &[9; 12]).unwrap();
    w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).unwrap();
    w.attr(attr::USERNAME, user.as_bytes()).unwrap();
    w.attr(attr::REALM, b"veil").unwrap();
    w.attr(attr::NONCE, nonce.unwrap_or(issued.as_bytes()))
        .unwrap();
    let key = auth::Key::derive(auth::ALG_MD5, user.as_bytes(), b"veil", pass.as_bytes());
    w.integrity(Integrity::Sha1, key.as_bytes()).unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    buf[..n].to_vec()
}

/// The handshake probes, and which of them may differ (compat: `stun.turn` alone).
const PROBES: [&str; 8] = [
    "-servername localhost -alpn h2",
    "-servername localhost -tls1_2 -cipher ECDHE-ECDSA-AES128-SHA",
    "-servername localhost -alpn http/1.1",
    "-servername localhost",
    "-servername wrong.example -alpn h2,http/1.1",
    "-noservername",
    "-servername localhost -alpn stun.turn",
    "-servername localhost -tls1_2 -alpn h2",
];

fn compare_handshakes(p: &Shared, mode: &str) {
    for probe in PROBES {
        let site = s_client(p.site.direct, probe);
        let veil = s_client(p.tls, probe);
        eprintln!(
            "{mode} {probe}\n  site: {:?} {:?}\n  veil: {:?} {:?}",
            site.facts, site.lengths, veil.facts, veil.lengths
        );
        assert!(!site.messages.is_empty(), "{probe}: the site answered");
        if mode == "compat" && probe.ends_with("stun.turn") {
            // The named difference: veil serves an RFC 7443 client, nginx refuses it.
            // (s_client names alert 120, no_application_protocol, "???".)
            assert_eq!(site.messages, ["TLS 1.3, Alert, fatal ???"], "{site:?}");
            assert!(
                veil.facts.iter().any(|f| f == "ALPN protocol: stun.turn"),
                "{veil:?}"
            );
            continue;
        }
        assert_eq!(site.messages, veil.messages, "{probe}: the same messages");
        assert_eq!(site.facts, veil.facts, "{probe}: the same parameters");
        assert_eq!(
            site.chain, veil.chain,
            "{probe}: the same certificate chain"
        );
    }
}

fn compare_behaviour(p: &Shared) {
    // Junk after the handshake: nginx's own 400, byte for byte but the date.
    let junk = b"JUNK\r\n\r\n";
    let (site, _, _) = tls_exchange(p.site.direct, &p.cert, &[b"http/1.1"], junk);
    let (veil, _, _) = tls_exchange(p.tls, &p.cert, &[b"http/1.1"], junk);
    assert!(
        undated(&site).starts_with("HTTP/1.1 400"),
        "{}",
        undated(&site)
    );
    assert_eq!(undated(&site), undated(&veil), "junk after the handshake");

    // Silent after the handshake: closed by the site's timer, without close_notify (nginx
    // skips it on a timeout), at the same time.
    let (site_b, site_notify, site_t) = tls_exchange(p.site.direct, &p.cert, &[b"h2"], b"");
    let (veil_b, veil_notify, veil_t) = tls_exchange(p.tls, &p.cert, &[b"h2"], b"");
    eprintln!(
        "silent after the handshake: site {site_t:?} notify {site_notify}, veil {veil_t:?} notify {veil_notify}"
    );
    assert_eq!(
        (site_b.is_empty(), site_notify),
        (veil_b.is_empty(), veil_notify)
    );
    assert!(site_t > Duration::from_millis(2500), "{site_t:?}");
    assert!(
        veil_t.abs_diff(site_t) < Duration::from_millis(700),
        "closed at {veil_t:?} through veil, {site_t:?} by the site"
    );

    // Silent before any byte: closed by the site's timer from accept.
    let (site_b, site_t) = raw(p.site.direct, b"", false);
    let (veil_b, veil_t) = raw(p.tls, b"", false);
    eprintln!("silent from accept: site {site_t:?}, veil {veil_t:?}");
    assert_eq!(site_b, veil_b);
    assert!(site_t > Duration::from_millis(2500), "{site_t:?}");
    assert!(
        veil_t.abs_diff(site_t) < Duration::from_millis(700),
        "closed at {veil_t:?} through veil, {site_t:?} by the site"
    );

    // Half-closed before a byte: closed at once by both, nothing said.
    let (site_b, site_t) = raw(p.site.direct, b"", true);
    let (veil_b, veil_t) = raw(p.tls, b"", true);
    assert_eq!(site_b, veil_b);
    assert!(site_t < Duration::from_secs(1) && veil_t < Duration::from_secs(1));

    // Plain HTTP on the TLS port: nginx's own answer.
    let get = b"GET / HTTP/1.0\r\n\r\n";
    let (site_b, _) = raw(p.site.direct, get, false);
    let (veil_b, _) = raw(p.tls, get, false);
    assert!(undated(&site_b).contains(" 400 "), "{}", undated(&site_b));
    assert_eq!(undated(&site_b), undated(&veil_b));
}

#[test]
fn a_prober_meets_the_site_in_compat_mode_but_for_a_stun_turn_offer() {
    let p = shared_port("19700-19719", "compat");
    compare_handshakes(&p, "compat");
    compare_behaviour(&p);
    // Compat serves TURN to anyone who speaks it: a Binding is answered (the residual tell
    // that strict mode removes).
    let (veil, _, _) = tls_exchange(p.tls, &p.cert, &[], &binding());
    assert_eq!(veil.get(..2), Some(&[1u8, 1][..]), "a Binding success");
}

#[test]
fn strict_mode_gives_the_site_to_all_but_native_clients_with_the_issued_nonce() {
    let p = shared_port("19720-19739", "strict");
    compare_handshakes(&p, "strict");
    compare_behaviour(&p);
    // STUN from a prober, over TLS and without: what the site answers those bytes.
    let wrong_nonce = allocate(common::SECRET, Some(b"obMatJos2gAAAnot-a-nonce-of-ours"));
    let other_secret = allocate("not-the-secret", None);
    for (what, bytes) in [
        ("Binding", binding()),
        ("Allocate with another nonce", wrong_nonce),
        ("Allocate under another secret", other_secret),
    ] {
        let (site, _, _) = tls_exchange(p.site.direct, &p.cert, &[], &bytes);
        let (veil, _, _) = tls_exchange(p.tls, &p.cert, &[], &bytes);
        assert!(
            undated(&site).starts_with("HTTP/1.1 400"),
            "{what}: {}",
            undated(&site)
        );
        assert_eq!(undated(&site), undated(&veil), "{what} over TLS");
        let (site, _) = raw(p.site.direct, &bytes, false);
        let (veil, _) = raw(p.tls, &bytes, false);
        assert_eq!(undated(&site), undated(&veil), "{what} without TLS");
    }
    // A native client with the nonce issued with its credential: TURN, over TLS and without.
    let req = allocate(common::SECRET, None);
    let mut tls = {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn =
            rustls::ClientConnection::new(common::stream::tls_client_config(&p.cert, &[]), name)
                .unwrap();
        let tcp = TcpStream::connect(p.tls).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        rustls::StreamOwned::new(conn, tcp)
    };
    tls.write_all(&req).unwrap();
    let mut head = [0u8; 20];
    tls.read_exact(&mut head).unwrap();
    assert_eq!(&head[..2], &[0x01, 0x03], "an Allocate success over TLS");
    let mut plain = TcpStream::connect(p.tls).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Another 5-tuple, another allocation under the same credential.
    plain.write_all(&req).unwrap();
    plain.read_exact(&mut head).unwrap();
    assert_eq!(&head[..2], &[0x01, 0x03], "an Allocate success without TLS");
}
