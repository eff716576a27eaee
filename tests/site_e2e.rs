//! One TLS port for TURN and a real website (`tls.site`), against Debian's nginx on loopback:
//! curl over HTTP/2, HTTP/1.1 and without ALPN gets the site's bytes through veil exactly as
//! from nginx directly, nginx logs the real client address (PROXY protocol v2), a passthrough
//! name gets the site's own TLS, plain HTTP gets the site's own answer, and TURN clients
//! (coturn's uclient over TLS, aioice over TLS, a Binding over plain TCP) relay on the same
//! port. Needs nginx, curl, coturn's tools and aioice (.ci/run installs them).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;
use common::site::Nginx;

fn nginx(dir: &Path, cert: &Path, key: &Path, direct: SocketAddr, behind: SocketAddr) -> Nginx {
    // Another name on the same server, whose key veil does not hold (passthrough).
    let shop = dir.join("shop");
    std::fs::create_dir_all(shop.join("www")).unwrap();
    std::fs::write(shop.join("www/index.html"), "<h1>the shop</h1>\n").unwrap();
    let (shop_cert, shop_key) = common::self_signed(&shop);
    let servers = format!(
        "server {{ listen {behind} ssl http2 proxy_protocol; server_name shop.test;\n\
           ssl_certificate {}; ssl_certificate_key {}; root {}; }}",
        shop_cert.display(),
        shop_key.display(),
        shop.join("www").display(),
    );
    Nginx::start(dir, (cert, key), direct, behind, &servers)
}

/// curl with `args` to `path` on `at`: (status line facts, body bytes).
fn curl(at: SocketAddr, path: &str, args: &[&str], from: &str) -> (String, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10", "--interface", from])
        .args(["-w", "\n%{http_version} %{http_code}", "-o", "-"])
        .args(args)
        .arg(format!("https://{at}{path}"))
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl {args:?}: {:?}", out.status);
    let mut body = out.stdout;
    let at = body.iter().rposition(|&b| b == b'\n').unwrap();
    let facts = String::from_utf8_lossy(&body[at + 1..]).to_string();
    body.truncate(at);
    (facts, body)
}

#[test]
fn the_site_is_served_through_veil_as_it_is_directly_and_turn_shares_the_port() {
    common::require("curl");
    let dir = std::env::temp_dir().join(format!("veil-site-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _d = TempDir(dir.clone());
    // veil and the site serve one certificate: the relay's (veil pins its upstream to it).
    let direct = common::free_tcp_addr();
    let behind = common::free_tcp_addr();
    let set = format!(
        "tls.site={{upstream: '{behind}', tls: true, proxy_protocol: v2, passthrough: [shop.test]}}"
    );
    let admin = common::free_tcp_addr().to_string();
    let (_relay, _tcp, tls) = common::start_stream_relay(
        "19600-19649",
        &[
            "--set",
            &set,
            "--admin",
            &admin,
            // The site speaks TLS 1.2 (nginx's default), so veil does too: a TLS 1.2 hello
            // that veil could not take would be the site's (as it must, to hide veil), and
            // coturn's uclient, which tries TLS 1.2 for some connections, would get nginx.
            "--set",
            "tls.allow_tls12=true",
            "--static-user",
            "dev:dev",
            "--user-quota",
            "100",
            "--allow-peer",
            "127.0.0.0/8",
        ],
    );
    let cert = common::stream_relay_cert("19600-19649");
    let key = cert.with_file_name("key.pem");
    let site = nginx(&dir, &cert, &key, direct, behind);

    for (alpn, want_version) in [
        (&["--http2"][..], "2"),
        (&["--http1.1"][..], "1.1"),
        (&["--http1.1", "--no-alpn"][..], "1.1"),
    ] {
        for path in ["/index.html", "/page.bin", "/missing"] {
            let direct = curl(site.direct, path, alpn, "127.0.0.1");
            let through = curl(tls, path, alpn, "127.0.0.7");
            assert_eq!(direct.1, through.1, "{alpn:?} {path}: the same bytes");
            assert_eq!(
                direct.0, through.0,
                "{alpn:?} {path}: the same version and status"
            );
            assert!(
                through.0.starts_with(want_version),
                "{alpn:?}: {}",
                through.0
            );
        }
    }
    // The site saw the real client (127.0.0.7) behind veil, on every request through it.
    let log = site.access_log();
    let behind: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("127.0.0.1 127.0.0.7 "))
        .collect();
    assert_eq!(behind.len(), 9, "{log}");

    // A passthrough name: the site's own TLS, with the certificate veil holds no key for.
    let shop = Command::new("curl")
        .args(["-sk", "--max-time", "10", "--resolve"])
        .arg(format!("shop.test:{}:127.0.0.1", tls.port()))
        .args(["-w", "%{certs}"])
        .arg(format!("https://shop.test:{}/index.html", tls.port()))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&shop.stdout).to_string();
    assert!(text.starts_with("<h1>the shop</h1>"), "{text}");
    let shop_pem = std::fs::read_to_string(dir.join("shop/cert.pem")).unwrap();
    let shop_b64: String = shop_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let served: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    assert_eq!(served, shop_b64, "the shop's own certificate: {text}");

    // Not TLS: plain HTTP on the TLS port gets what the site gives plain HTTP on its TLS port.
    let raw = |at: SocketAddr| {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(at).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out).to_string();
        let status = out.lines().next().unwrap_or_default().to_string();
        let body = out
            .split_once("\r\n\r\n")
            .map(|b| b.1.to_string())
            .unwrap_or_default();
        (status, body)
    };
    let (direct_raw, through_raw) = (raw(site.direct), raw(tls));
    assert!(direct_raw.0.contains(" 400 "), "{direct_raw:?}");
    assert_eq!(direct_raw, through_raw);
    // Not TLS, STUN: TURN over TCP on the same port (a Binding answered).
    {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(tls).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut req = vec![0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42];
        req.extend_from_slice(&[7; 12]);
        c.write_all(&req).unwrap();
        let mut head = [0u8; 20];
        c.read_exact(&mut head).unwrap();
        assert_eq!(&head[..2], &[1, 1], "a Binding success");
        assert_eq!(&head[8..], &req[8..], "for our transaction");
    }

    // Nine curls, the shop and the plain HTTP request went to the site.
    let admin: SocketAddr = admin.parse().unwrap();
    let routed = |route: &str| {
        let (_, m) = common::http_get(admin, "/metrics");
        let s = format!("veil_relay_shared_port_connections_total{{route=\"{route}\"}}");
        common::metric(&m, &s).unwrap_or(-1.0)
    };
    // (Workers publish their counters every second; the Binding is TURN.)
    common::wait_metric(
        admin,
        "veil_relay_shared_port_connections_total{route=\"site\"}",
        11.0,
    );
    common::wait_metric(
        admin,
        "veil_relay_shared_port_connections_total{route=\"turn\"}",
        1.0,
    );

    // TURN on the same port: coturn's uclient over TLS, zero loss. (Its attempts with TLS 1.0
    // and 1.1, which veil does not speak, are the site's to answer: nginx may.)
    common::require("turnutils_uclient");
    let peer_port = common::free_udp_port();
    let mut peer = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.2", "-p", &peer_port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("turnutils_peer");
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("turnutils_uclient")
        .args(["-S", "-t", "-u", "dev", "-w", "dev", "-e", "127.0.0.2"])
        .args(["-r", &peer_port.to_string(), "-p", &tls.port().to_string()])
        .args(["-m", "2", "-n", "20", "127.0.0.1"])
        .output()
        .expect("turnutils_uclient");
    let _ = peer.kill();
    let _ = peer.wait();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Total lost packets 0"), "{text}");
    // aioice's TURN client over TLS on the same port: every echo back, nothing corrupt.
    common::require_aioice();
    let (user, pass) = common::credential("aioice");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aioice/turn_check.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([
            "echo",
            "--transport",
            "tls",
            "--port",
            &tls.port().to_string(),
        ])
        .args([
            "--count",
            "32",
            "--user",
            &user,
            "--password",
            &pass,
            "--cafile",
        ])
        .arg(&cert)
        .env("SSL_CERT_FILE", &cert)
        .output()
        .expect("python3 runs");
    let v = common::json_result(&out, "aioice");
    assert!(v["error"].is_null(), "aioice: {v}");
    assert_eq!(v["received"], 32, "aioice: {v}");
    assert_eq!(v["corrupt"], 0, "aioice: {v}");

    // uclient's and aioice's connections.
    let deadline = Instant::now() + Duration::from_secs(5);
    while routed("turn") < 4.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(routed("turn") >= 4.0, "{}", routed("turn"));
}
