//! Issue 21 §1 against the real binary: a credential whose expiry overflows the clock's
//! arithmetic is refused (or, with no bound, served with a sane lifetime), and the worker goes on
//! answering; a worker that dies or stalls anyway (a fault injected on purpose, debug builds
//! only) makes the node answer 503 at once and exit non-zero.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use common::{Attr, RawTurn, SECRET, error_code, free_tcp_addr, http_get, start_relay_env};
use veil_relay::proto::stun::{Class, Message, Writer, attr, find_attr, method};

/// A client whose REST username is `<expiry>:mallory`, correctly signed with the relay's secret.
fn client_expiring_at(relay: SocketAddr, expiry: &str) -> RawTurn {
    let username = format!("{expiry}:mallory");
    let password = String::from_utf8(
        veil_relay::proto::auth::rest_password(SECRET.as_bytes(), username.as_bytes()).to_vec(),
    )
    .unwrap();
    RawTurn::with("127.0.0.1:0", relay, username, password)
}

/// Sends an Allocate, signed once a challenge gave a nonce; the final answer.
fn allocate_answer(c: &mut RawTurn) -> Vec<u8> {
    let transport = [Attr::Raw(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])];
    for _ in 0..2 {
        let txid = c.txid();
        let req = c.build(
            method::ALLOCATE,
            Class::Request,
            txid,
            &transport,
            !c.nonce.is_empty(),
        );
        c.sock.send_to(&req, c.server).unwrap();
        let resp = c.response(&txid).expect("the worker answers");
        if c.nonce.is_empty()
            && let Some(n) = find_attr(&resp, attr::NONCE)
        {
            c.nonce = n.to_vec();
            continue;
        }
        return resp;
    }
    unreachable!()
}

/// Binding requests from the client's own socket (so the same worker) answered, of `n`.
fn bindings_answered(c: &mut RawTurn, n: usize) -> usize {
    (0..n)
        .filter(|_| {
            let txid = c.txid();
            let req = c.build(method::BINDING, Class::Request, txid, &[], false);
            c.sock.send_to(&req, c.server).unwrap();
            c.response(&txid).is_some()
        })
        .count()
}

#[test]
fn a_never_expiring_credential_is_refused_and_the_worker_keeps_answering() {
    let admin = free_tcp_addr();
    let admin_s = admin.to_string();
    let relay = start_relay_env("11000-11099", &["--admin", &admin_s], &[]);
    for expiry in ["9999999999999999999", "18446744073709551615"] {
        let mut c = client_expiring_at(relay.addr, expiry);
        let resp = allocate_answer(&mut c);
        assert_eq!(
            error_code(&resp),
            Some(401),
            "an expiry {expiry} beyond auth.max_validity is a bad credential"
        );
        assert_eq!(bindings_answered(&mut c, 5), 5, "the worker still answers");
    }
    common::wait_metric(
        admin,
        "veil_relay_auth_failures_total{reason=\"expiry_too_far\"}",
        2.0,
    );
    // A year ahead is beyond the default 30 days too; an hour ahead is fine.
    let in_a_year = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 366 * 86_400;
    let mut c = client_expiring_at(relay.addr, &in_a_year.to_string());
    assert_eq!(error_code(&allocate_answer(&mut c)), Some(401));
    let mut ok = RawTurn::rest("127.0.0.1:0", relay.addr, "alice");
    ok.allocate();
}

#[test]
fn with_no_validity_bound_a_huge_expiry_gets_a_sane_lifetime() {
    let relay = start_relay_env("11100-11199", &["--set", "auth.max_validity=null"], &[]);
    for expiry in ["9999999999999999999", "18446744073709551615"] {
        let mut c = client_expiring_at(relay.addr, expiry);
        let resp = allocate_answer(&mut c);
        let m = Message::decode(&resp).unwrap();
        assert_eq!(m.class, Class::Success, "{:?}", error_code(&resp));
        let lifetime = m.get_u32(attr::LIFETIME).unwrap().unwrap();
        assert_eq!(
            lifetime, 600,
            "the default lifetime, not 0 from a wrapped sum"
        );
        // A Refresh asking for the longest works out the same bound.
        let resp = c.request(
            method::REFRESH,
            &[Attr::Raw(attr::LIFETIME, 3600u32.to_be_bytes().to_vec())],
        );
        let m = Message::decode(&resp).unwrap();
        assert_eq!(m.class, Class::Success);
        assert_eq!(m.get_u32(attr::LIFETIME).unwrap().unwrap(), 3600);
        assert_eq!(bindings_answered(&mut c, 5), 5);
    }
}

/// Polls `/readyz` every 20 ms until it answers 503 (`within` at most); its body.
fn wait_unready(admin: SocketAddr, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (code, body) = http_get(admin, "/readyz");
        if code == 503 {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz still {code} {body:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (10 s at most) for the relay process to exit; its status.
fn wait_exit(relay: &mut common::Relay) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = relay.child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "the relay did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn supervised_relay(ports: &str, admin: SocketAddr, extra: &[&str]) -> common::Relay {
    let admin = admin.to_string();
    let mut args = vec!["--admin", admin.as_str()];
    args.extend_from_slice(extra);
    start_relay_env(ports, &args, &[("VEIL_TEST_FAULTS", "1")])
}

#[test]
fn a_worker_that_panics_makes_the_node_unready_at_once_then_exit_nonzero() {
    let admin = free_tcp_addr();
    let mut relay = supervised_relay("11200-11299", admin, &[]);
    assert_eq!(http_get(admin, "/readyz").0, 200);
    assert_eq!(http_get(admin, "/healthz").0, 200);
    let started = Instant::now();
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(b"veil-test-fault:panic", relay.addr).unwrap();
    let body = wait_unready(admin, Duration::from_secs(2));
    assert!(body.contains("panicked"), "{body:?}");
    let (code, body) = http_get(admin, "/healthz");
    assert_eq!(code, 503);
    assert!(
        body.starts_with("worker ") && body.trim_end().ends_with(" panicked"),
        "{body:?}"
    );
    let (_, status) = http_get(admin, "/status");
    assert!(status.contains("\"ready\":false"), "{status}");
    let exit = wait_exit(&mut relay);
    assert_eq!(
        exit.code(),
        Some(1),
        "the supervised exit, not a crash: {exit:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[test]
fn a_worker_that_stops_turning_its_loop_makes_the_node_unready_then_exit_nonzero() {
    let admin = free_tcp_addr();
    let mut relay = supervised_relay("11300-11399", admin, &["--set", "lifecycle.worker_stall=2"]);
    // A plain Binding still works before the fault.
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut req = [0u8; 20];
    Writer::new(&mut req, method::BINDING, Class::Request, &[3; 12])
        .unwrap()
        .finish();
    s.send_to(&req, relay.addr).unwrap();
    assert!(s.recv_from(&mut [0u8; 256]).is_ok());
    s.send_to(b"veil-test-fault:stall", relay.addr).unwrap();
    // Nothing answers now, and within the stall bound plus a check the node says so.
    s.send_to(&req, relay.addr).unwrap();
    assert!(
        s.recv_from(&mut [0u8; 256]).is_err(),
        "the stalled worker answers nothing"
    );
    let body = wait_unready(admin, Duration::from_secs(4));
    assert!(body.contains("stalled"), "{body:?}");
    let exit = wait_exit(&mut relay);
    assert_eq!(
        exit.code(),
        Some(1),
        "the supervised exit, not a crash: {exit:?}"
    );
}
