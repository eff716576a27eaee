//! Unit tests of the sans-I/O server: every request, error and expiry path, with no network.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::auth::{self, Credentials, NonceKey};
use crate::peer_filter::{Cidr, PeerFilter};
use crate::privacy::Redactor;
use crate::stun::{self, Class, Integrity, Message, Writer, attr, decode_xor_address, find_attr};
use crate::testing::*;

mod fast;
mod hostile;
mod issued_nonce;
mod watch;

/// Public addresses as values only: unit tests send nothing anywhere.
const PEER: &str = "93.184.216.34:5000";
const PEER2: &str = "93.184.216.35:6000";

fn peer_attr(p: &str) -> (u16, Vec<u8>) {
    (attr::XOR_PEER_ADDRESS, p.as_bytes().to_vec())
}

fn relayed(resp: &[u8]) -> Vec<SocketAddr> {
    let m = Message::decode(resp).unwrap();
    let mut v = Vec::new();
    let mut at = stun::HEADER_LEN;
    while at + 4 <= resp.len() {
        let t = u16::from_be_bytes([resp[at], resp[at + 1]]);
        let l = u16::from_be_bytes([resp[at + 2], resp[at + 3]]) as usize;
        if t == attr::XOR_RELAYED_ADDRESS {
            v.push(decode_xor_address(&resp[at + 4..at + 4 + l], m.transaction_id()).unwrap());
        }
        at += 4 + ((l + 3) & !3);
    }
    v
}

fn lifetime_of(resp: &[u8]) -> u32 {
    let v = find_attr(resp, attr::LIFETIME).expect("LIFETIME");
    u32::from_be_bytes(v.try_into().unwrap())
}

/// Allocates for `c`, asserting it succeeds.
fn allocate_ok(c: &mut Client, s: &mut Server, env: &mut FakeEnv, clock: &Clock) {
    let r = c.allocate(s, env, clock, &[]);
    assert_eq!(class(&r), Class::Success, "{:?}", code(&r));
}

/// Allocates for `c` and permits [`PEER`], asserting both succeed.
fn allocate_and_permit(c: &mut Client, s: &mut Server, env: &mut FakeEnv, clock: &Clock) {
    allocate_ok(c, s, env, clock);
    let r = c.permit(s, env, clock, PEER);
    assert_eq!(class(&r), Class::Success, "{:?}", code(&r));
}

#[test]
fn binding_answers_xor_mapped_address_and_mirrors_fingerprint() {
    let (mut s, mut env, clock) = setup();
    let c = Client::rest(40000, "a");
    for fp in [true, false] {
        let req = c.build(method::BINDING, [1; 12], &[], false, fp);
        let resp = c.send(&mut s, &mut env, &clock, &req).bytes();
        let m = Message::decode(&resp).unwrap();
        assert_eq!((m.method, m.class), (method::BINDING, Class::Success));
        let mapped = decode_xor_address(
            find_attr(&resp, attr::XOR_MAPPED_ADDRESS).unwrap(),
            m.transaction_id(),
        )
        .unwrap();
        assert_eq!(mapped, c.key.addr);
        assert_eq!(
            m.has_fingerprint(),
            fp,
            "FINGERPRINT iff the request had one"
        );
        assert!(
            find_attr(&resp, attr::SOFTWARE).is_none(),
            "no SOFTWARE unless configured"
        );
    }
    // Configured SOFTWARE appears in signed responses only: never in one a spoofed source
    // can aim at a victim (a Binding response, a challenge).
    let mut cfg = config();
    cfg.software = Some("veil".into());
    let mut s = server_with(cfg);
    let req = c.build(method::BINDING, [1; 12], &[], false, true);
    let resp = c.send(&mut s, &mut env, &clock, &req).bytes();
    assert_eq!(find_attr(&resp, attr::SOFTWARE), None);
    let mut a = Client::rest(40001, "sw");
    let r = a.allocate(&mut s, &mut env, &clock, &[]);
    assert_eq!(class(&r), Class::Success);
    assert_eq!(find_attr(&r, attr::SOFTWARE), Some(&b"veil"[..]));
}

#[test]
fn unauthenticated_allocate_gets_401_challenge_without_state() {
    let (mut s, mut env, clock) = setup();
    let c = Client::rest(40000, "a");
    let req = c.build(
        method::ALLOCATE,
        [2; 12],
        &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
        false,
        false,
    );
    let resp = c.send(&mut s, &mut env, &clock, &req).bytes();
    assert_eq!(class(&resp), Class::Error);
    assert_eq!(code(&resp), Some(401));
    assert_eq!(find_attr(&resp, attr::REALM), Some(REALM.as_bytes()));
    let nonce = find_attr(&resp, attr::NONCE).unwrap();
    assert!(
        nonce.starts_with(auth::NONCE_COOKIE),
        "nonce announces the security features"
    );
    assert_eq!(
        find_attr(&resp, attr::PASSWORD_ALGORITHMS),
        Some(&auth::PASSWORD_ALGORITHMS[..])
    );
    assert!(
        find_attr(&resp, attr::MESSAGE_INTEGRITY).is_none(),
        "a challenge is not signed"
    );
    // Many unauthenticated requests leave nothing behind.
    for i in 0..1000u16 {
        let c = Client::rest(1000 + i, "x");
        c.send(&mut s, &mut env, &clock, &req);
    }
    assert_eq!(s.allocation_count(), 0);
    assert!(env.open.is_empty());
}

#[test]
fn allocate_with_rest_credentials() {
    let (mut s, mut env, clock) = setup();
    let mut c = Client::rest(40000, "alice");
    let resp = c.allocate(&mut s, &mut env, &clock, &[]);
    assert_eq!(class(&resp), Class::Success, "code {:?}", code(&resp));
    assert_eq!(c.verify(&resp), Some(Integrity::Sha1));
    let r = relayed(&resp);
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].ip(),
        "203.0.113.5".parse::<IpAddr>().unwrap(),
        "advertised, not bound, address"
    );
    assert_eq!(lifetime_of(&resp), 600);
    let m = Message::decode(&resp).unwrap();
    let mapped = decode_xor_address(
        find_attr(&resp, attr::XOR_MAPPED_ADDRESS).unwrap(),
        m.transaction_id(),
    )
    .unwrap();
    assert_eq!(mapped, c.key.addr);
    assert_eq!(env.open.len(), 1);
    let (bound, df) = *env.open.values().next().unwrap();
    assert_eq!(bound.ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(bound.port(), r[0].port());
    assert!(!df);
    assert_eq!(s.shared().allocations(), 1);
}

#[test]
fn rotated_secret_still_validates_and_wrong_or_expired_credentials_get_401() {
    let (mut s, mut env, clock) = setup();
    let mut old = Client::new(40001, format!("{}:bob", T0 + 60), OLD_SECRET);
    allocate_ok(&mut old, &mut s, &mut env, &clock);

    let mut wrong = Client::rest(40002, "carol");
    wrong.password = "not-the-password".into();
    let resp = wrong.allocate(&mut s, &mut env, &clock, &[]);
    assert_eq!(code(&resp), Some(401));

    let mut unknown_secret = Client::new(40003, format!("{}:dave", T0 + 60), b"some-other-secret");
    assert_eq!(
        code(&unknown_secret.allocate(&mut s, &mut env, &clock, &[])),
        Some(401)
    );

    let mut expired = Client::new(40004, format!("{}:erin", T0 - 1), SECRET);
    assert_eq!(
        code(&expired.allocate(&mut s, &mut env, &clock, &[])),
        Some(401)
    );

    let mut garbage = Client::new(40005, "no-timestamp".into(), SECRET);
    assert_eq!(
        code(&garbage.allocate(&mut s, &mut env, &clock, &[])),
        Some(401)
    );
    assert_eq!(s.allocation_count(), 1);
    assert_eq!(s.stats().auth_failures, 4);
}

#[test]
fn static_users_work_for_development() {
    let creds = Credentials {
        secrets: vec![],
        static_users: vec![("dev".into(), "devpass".into())],
        ..Default::default()
    };
    let shared = Shared::new(
        config(),
        creds,
        NonceKey::new(b"n"),
        PeerFilter::new(&[], &[]),
        Redactor::with_secret(b"r", false),
    );
    let mut s = Server::new(Arc::new(shared));
    let (mut env, clock) = (FakeEnv::default(), Clock::new());
    let mut c = Client::rest(40000, "x");
    c.username = "dev".into();
    c.password = "devpass".into();
    allocate_ok(&mut c, &mut s, &mut env, &clock);
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_one() {
    let (mut s, mut env, mut clock) = setup();
    let mut c = Client::new(40000, format!("{}:a", T0 + 86_400), SECRET);
    allocate_ok(&mut c, &mut s, &mut env, &clock);
    let old_nonce = c.nonce.clone();
    clock.secs = 3601; // past nonce_lifetime, allocation (600 s) gone too
    s.handle_timeout(clock.now(), &mut env);
    let txid = c.txid();
    let pkt = c.build(
        method::ALLOCATE,
        txid,
        &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
        true,
        true,
    );
    let resp = c.send(&mut s, &mut env, &clock, &pkt).bytes();
    assert_eq!(code(&resp), Some(438));
    assert_eq!((s.stats().stale_nonces, s.stats().auth_failures), (1, 0));
    let fresh = find_attr(&resp, attr::NONCE).unwrap();
    assert_ne!(fresh, &old_nonce[..]);
    // RFC 8489 §9.2.4: a 438 carries REALM, NONCE and PASSWORD-ALGORITHMS, and no integrity.
    assert!(find_attr(&resp, attr::MESSAGE_INTEGRITY).is_none());
    assert_eq!(
        find_attr(&resp, attr::PASSWORD_ALGORITHMS),
        Some(&auth::PASSWORD_ALGORITHMS[..])
    );
    // Retrying with the fresh nonce succeeds.
    c.nonce = fresh.to_vec();
    allocate_ok(&mut c, &mut s, &mut env, &clock);
}

#[test]
fn nonce_is_bound_to_the_client_transport_address() {
    let (mut s, mut env, clock) = setup();
    let mut a = Client::rest(40000, "a");
    a.allocate(&mut s, &mut env, &clock, &[]);
    let mut b = Client::rest(40001, "a");
    b.nonce = a.nonce.clone();
    let txid = b.txid();
    let pkt = b.build(
        method::ALLOCATE,
        txid,
        &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
        true,
        false,
    );
    assert_eq!(
        code(&b.send(&mut s, &mut env, &clock, &pkt).bytes()),
        Some(438)
    );
}

#[test]
fn sha256_password_algorithm_and_integrity() {
    let (mut s, mut env, clock) = setup();
    let mut c = Client::rest(40000, "a");
    c.alg = auth::ALG_SHA256;
    let resp = c.allocate(&mut s, &mut env, &clock, &[]);
    assert_eq!(class(&resp), Class::Success, "{:?}", code(&resp));
    assert!(find_attr(&resp, attr::MESSAGE_INTEGRITY_SHA256).is_some());
    assert_eq!(c.verify(&resp), Some(Integrity::Sha256));
}

#[test]
fn password_algorithms_mismatch_is_400() {
    let (mut s, mut env, clock) = setup();
    let mut c = Client::rest(40000, "a");
    c.allocate(&mut s, &mut env, &clock, &[]); // learn a nonce
    let txid = c.txid();
    // PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS.
    let pkt = c.build(
        method::REFRESH,
        txid,
        &[(attr::PASSWORD_ALGORITHM, vec![0, 2, 0, 0])],
        true,
        false,
    );
    assert_eq!(
        code(&c.send(&mut s, &mut env, &clock, &pkt).bytes()),
        Some(400)
    );
    // A list that is not the one we sent.
    let txid = c.txid();
    let pkt = c.build(
        method::REFRESH,
        txid,
        &[
            (attr::PASSWORD_ALGORITHMS, vec![0, 1, 0, 0]),
            (attr::PASSWORD_ALGORITHM, vec![0, 1, 0, 0]),
        ],
        true,
        false,
    );
    assert_eq!(
        code(&c.send(&mut s, &mut env, &clock, &pkt).bytes()),
        Some(400)
    );
}

#[test]
fn allocate_transport_and_attribute_combination_errors() {
    let (mut s, mut env, clock) = setup();
    let mut c = Client::rest(40000, "a");
    let r = c.request(&mut s, &mut env, &clock, method::ALLOCATE, &[]);
    assert_eq!(code(&r), Some(400), "REQUESTED-TRANSPORT missing");
    assert_eq!(
        c.verify(&r),
        None,
        "an Allocate that cannot succeed is refused before authentication"
    );
    let r = c.request(
        &mut s,
        &mut env,
        &clock,
        method::ALLOCATE,
        &[(attr::REQUESTED_TRANSPORT, vec![6, 0, 0, 0])],
    );
    assert_eq!(
        code(&r),
        Some(442),
        "TCP relaying is not offered over UDP here"
    );
    assert_eq!(
        c.verify(&r),
        Some(Integrity::Sha1),
        "errors after authentication are signed"
    );
    let token = (attr::RESERVATION_TOKEN, vec![1; 8]);
    let even = (attr::EVEN_PORT, vec![0x80]);
    let fam4 = (attr::REQUESTED_ADDRESS_FAMILY, vec![1, 0, 0, 0]);
    let add6 = (attr::ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0]);
    let add4 = (attr::ADDITIONAL_ADDRESS_FAMILY, vec![1, 0, 0, 0]);
    for (combo, want) in [
        (vec![token.clone(), even.clone()], 400),
        (vec![token.clone(), fam4.clone()], 400),
        (vec![even.clone(), add6.clone()], 400),
        (vec![fam4.clone(), add6.clone()], 400),
        (vec![add4.clone()], 400),
        (
            vec![(attr::REQUESTED_ADDRESS_FAMILY, vec![9, 0, 0, 0])],
            440,
        ),
        (vec![token.clone()], 508),
        (vec![(attr::LIFETIME, vec![1, 2])], 400),
    ] {
        let r = c.allocate(&mut s, &mut env, &clock, &combo);
        assert_eq!(code(&r), Some(want), "{combo:?}");
    }
    assert_eq!(s.allocation_count(), 0);
    assert_eq!(
        s.shared().allocations(),
        0,
        "failed allocations give their quota back"
    );
}

#[test]
fn retransmitted_allocate_is_idempotent_and_a_second_one_is_437() {
    let (mut s, mut env, clock) = setup();
    let mut c = Client::rest(40000, "a");
    c.allocate(&mut s, &mut env, &clock, &[]); // 401 then success; nonce learned
    let mut c2 = Client::rest(40001, "a");
    c2.nonce = {
        let r = c2.allocate(&mut s, &mut env, &clock, &[]);
        assert_eq!(class(&r), Class::Success);
        c2.nonce.clone()
    };
    // Retransmit exactly the request that created c2's allocation.
    let txid = {
        let mut t = [9u8; 12];
        t[..4].copy_from_slice(&c2.txn.to_be_bytes());
        t[4..6].copy_from_slice(&40001u16.to_be_bytes());
        t
    };
    let first = c2.build(
        method::ALLOCATE,
        txid,
        &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
        true,
        true,
    );
    let again = c2.send(&mut s, &mut env, &clock, &first).bytes();
    assert_eq!(class(&again), Class::Success);
    assert_eq!(env.open.len(), 2, "no new socket for a retransmission");
    let other = c2.allocate(&mut s, &mut env, &clock, &[]);
    assert_eq!(code(&other), Some(437));
    assert_eq!(relayed(&again).len(), 1);
}

#[test]
fn user_quota_486_and_total_cap_508() {
    let (mut s, mut env, clock) = setup(); // user quota 3, total 5
    for i in 0..3 {
        // Different credentials minted for the same id share its quota.
        let mut c = Client::new(
            41000 + i,
            format!("{}:same-user", T0 + 100 + i as u64),
            SECRET,
        );
        assert_eq!(
            class(&c.allocate(&mut s, &mut env, &clock, &[])),
            Class::Success
        );
    }
    let mut c = Client::new(41010, format!("{}:same-user", T0 + 999), SECRET);
    let r = c.allocate(&mut s, &mut env, &clock, &[]);
    assert_eq!(code(&r), Some(486));
    for i in 0..2 {
        let mut c = Client::rest(42000 + i, &format!("u{i}"));
        assert_eq!(
            class(&c.allocate(&mut s, &mut env, &clock, &[])),
            Class::Success
        );
    }
    let mut c = Client::rest(42010, "late");
    assert_eq!(code(&c.allocate(&mut s, &mut env, &clock, &[])), Some(508));
    assert_eq!(s.shared().allocations(), 5);
}

#[test]
fn port_exhaustion_is_508_and_releases_quota() {
    let (mut s, mut env, clock) = setup();
    env.exhausted = true;
    let mut c = Client::rest(40000, "a");
    assert_eq!(code(&c.allocate(&mut s, &mut env, &clock, &[])), Some(508));
    assert_eq!(s.shared().allocations(), 0);
}

#[test]
fn lifetime_is_clamped_refreshed_and_zero_deletes() {
    let (mut s, mut env, clock) = setup();
    let mut c = Client::rest(40000, "a");
    let r = c.allocate(
        &mut s,
        &mut env,
        &clock,
        &[(attr::LIFETIME, 100_000u32.to_be_bytes().to_vec())],
    );
    assert_eq!(lifetime_of(&r), 3600);
    let r = c.request(
        &mut s,
        &mut env,
        &clock,
        method::REFRESH,
        &[(attr::LIFETIME, 1200u32.to_be_bytes().to_vec())],
    );
    assert_eq!(class(&r), Class::Success);
    assert_eq!(lifetime_of(&r), 1200);
    let r = c.request(&mut s, &mut env, &clock, method::REFRESH, &[]);
    assert_eq!(lifetime_of(&r), 600);
    let r = c.request(
        &mut s,
        &mut env,
        &clock,
        method::REFRESH,
        &[(attr::LIFETIME, vec![0; 4])],
    );
    assert_eq!(class(&r), Class::Success);
    assert_eq!(lifetime_of(&r), 0);
    assert!(env.open.is_empty(), "the relayed socket is closed");
    assert_eq!(s.shared().allocations(), 0);
    let r = c.request(&mut s, &mut env, &clock, method::REFRESH, &[]);
    assert_eq!(code(&r), Some(437), "no allocation any more");
}

#[test]
fn refresh_family_mismatch_is_443_and_other_username_is_441() {
    let (mut s, mut env, clock) = setup();
    let mut c = Client::rest(40000, "a");
    c.allocate(&mut s, &mut env, &clock, &[]);
    let r = c.request(
        &mut s,
        &mut env,
        &clock,
        method::REFRESH,
        &[(attr::REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0])],
    );
    assert_eq!(code(&r), Some(443));
    let mut other = Client::rest(40000, "someone-else");
    other.nonce = c.nonce.clone();
    let r = other.request(&mut s, &mut env, &clock, method::REFRESH, &[]);
    assert_eq!(code(&r), Some(441));
}

#[test]
fn create_permission_is_all_or_nothing() {
    let (mut s, mut env, clock) = setup();
    let mut c = Client::rest(40000, "a");
    c.allocate(&mut s, &mut env, &clock, &[]);
    let r = c.request(&mut s, &mut env, &clock, method::CREATE_PERMISSION, &[]);
    assert_eq!(code(&r), Some(400), "no XOR-PEER-ADDRESS");
    let r = c.request(
        &mut s,
        &mut env,
        &clock,
        method::CREATE_PERMISSION,
        &[peer_attr(PEER), peer_attr("169.254.169.254:80")],
    );
    assert_eq!(code(&r), Some(403));
    let r = c.request(
        &mut s,
        &mut env,
        &clock,
        method::CREATE_PERMISSION,
        &[peer_attr(PEER), peer_attr("[2606:4700::1]:80")],
    );
    assert_eq!(code(&r), Some(443), "IPv6 peer on an IPv4 allocation");
    // Nothing was installed by the failed requests.
    assert!(matches!(
        indication(&c, &mut s, &mut env, &clock, PEER, b"x"),
        Reply::None
    ));
    let r = c.request(
        &mut s,
        &mut env,
        &clock,
        method::CREATE_PERMISSION,
        &[peer_attr(PEER), peer_attr(PEER2)],
    );
    assert_eq!(class(&r), Class::Success);
    assert!(matches!(
        indication(&c, &mut s, &mut env, &clock, PEER, b"x"),
        Reply::Forward(..)
    ));
    assert!(matches!(
        indication(&c, &mut s, &mut env, &clock, PEER2, b"x"),
        Reply::Forward(..)
    ));
}

fn indication(
    c: &Client,
    s: &mut Server,
    env: &mut FakeEnv,
    clock: &Clock,
    peer: &str,
    data: &[u8],
) -> Reply {
    let mut buf = vec![0u8; 1500];
    let mut w = Writer::new(&mut buf, method::SEND, Class::Indication, &[7; 12]).unwrap();
    w.xor_address(attr::XOR_PEER_ADDRESS, sa(peer)).unwrap();
    w.attr(attr::DATA, data).unwrap();
    let n = w.finish();
    c.send(s, env, clock, &buf[..n])
}

/// A peer's datagram arriving on the allocation's relayed socket.
fn from_peer(
    s: &mut Server,
    env: &FakeEnv,
    clock: &Clock,
    peer: &str,
    data: &[u8],
) -> Option<(ClientKey, Vec<u8>)> {
    let id = *env.open.keys().next().expect("a relayed socket");
    let mut buf = vec![0u8; HEADROOM + data.len() + TAILROOM];
    buf[HEADROOM..HEADROOM + data.len()].copy_from_slice(data);
    s.handle_peer(
        clock.now(),
        id,
        sa(peer),
        &mut buf,
        HEADROOM..HEADROOM + data.len(),
    )
    .map(|d| (d.client, buf[d.frame].to_vec()))
}

/// Data indication transaction ids carry no counter: before, bytes 8–12 were the worker's
/// sequence number in clear, so a client counted what the worker sent to others between two of
/// its own.
#[test]
fn data_indication_txids_carry_no_worker_counter() {
    let (mut s, mut env, clock) = setup();
    let mut c = Client::rest(40000, "a");
    c.allocate(&mut s, &mut env, &clock, &[]);
    c.permit(&mut s, &mut env, &clock, PEER);
    let ids: Vec<[u8; 12]> = (0..500)
        .map(|_| {
            let (_, msg) = from_peer(&mut s, &env, &clock, PEER, b"x").unwrap();
            *Message::decode(&msg).unwrap().transaction_id()
        })
        .collect();
    assert_no_counter(&ids);
}

#[test]
fn send_and_data_indications_need_a_permission_both_ways() {
    let (mut s, mut env, mut clock) = setup();
    let mut c = Client::rest(40000, "a");
    c.allocate(&mut s, &mut env, &clock, &[]);
    assert!(matches!(
        indication(&c, &mut s, &mut env, &clock, PEER, b"hi"),
        Reply::None
    ));
    assert!(
        from_peer(&mut s, &env, &clock, PEER, b"hello").is_none(),
        "no permission, no data"
    );
    c.permit(&mut s, &mut env, &clock, PEER);
    match indication(&c, &mut s, &mut env, &clock, PEER, b"hi") {
        Reply::Forward(id, peer, data) => {
            assert_eq!(peer, sa(PEER));
            assert_eq!(data, b"hi");
            assert!(env.open.contains_key(&id));
        }
        _ => panic!("forwarded"),
    }
    // The permission is per IP: another port on the same IP is fine.
    let (to, msg) = from_peer(&mut s, &env, &clock, "93.184.216.34:7777", b"hello!").unwrap();
    assert_eq!(to, c.key);
    let m = Message::decode(&msg).expect("a Data indication");
    assert_eq!((m.method, m.class), (method::DATA, Class::Indication));
    assert_eq!(m.get(attr::DATA), Some(&b"hello!"[..]));
    assert_eq!(
        m.get_xor_address(attr::XOR_PEER_ADDRESS).unwrap().unwrap(),
        sa("93.184.216.34:7777")
    );
    // Permissions last 300 s.
    clock.secs = 301;
    s.handle_timeout(clock.now(), &mut env);
    assert!(from_peer(&mut s, &env, &clock, PEER, b"late").is_none());
    assert!(matches!(
        indication(&c, &mut s, &mut env, &clock, PEER, b"late"),
        Reply::None
    ));
}

#[test]
fn data_indication_for_ipv6_peer_fits_headroom() {
    let (mut s, mut env, clock) = setup();
    let mut c = Client::rest(40000, "a");
    let r = c.allocate(
        &mut s,
        &mut env,
        &clock,
        &[(attr::REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0])],
    );
    assert_eq!(relayed(&r)[0].ip(), "::1".parse::<IpAddr>().unwrap());
    let p6 = "[2606:4700::1111]:443";
    c.permit(&mut s, &mut env, &clock, p6);
    let (_, msg) = from_peer(&mut s, &env, &clock, p6, b"odd").unwrap();
    let m = Message::decode(&msg).unwrap();
    assert_eq!(m.get(attr::DATA), Some(&b"odd"[..]));
    assert_eq!(msg.len() % 4, 0, "padded");
}

fn channel_data(ch: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = ch.to_be_bytes().to_vec();
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[test]
fn channel_bind_rules_and_channel_data_both_ways() {
    let (mut s, mut env, mut clock) = setup();
    let mut c = Client::rest(40000, "a");
    c.allocate(&mut s, &mut env, &clock, &[]);
    let ch = |n: u16| (attr::CHANNEL_NUMBER, vec![(n >> 8) as u8, n as u8, 0, 0]);
    for bad in [0x0000, 0x3FFF, 0x8000, 0xFFFF] {
        let r = c.request(
            &mut s,
            &mut env,
            &clock,
            method::CHANNEL_BIND,
            &[ch(bad), peer_attr(PEER)],
        );
        assert_eq!(code(&r), Some(400), "channel {bad:#x}");
    }
    let r = c.request(
        &mut s,
        &mut env,
        &clock,
        method::CHANNEL_BIND,
        &[ch(0x4000)],
    );
    assert_eq!(code(&r), Some(400), "no peer");
    let r = c.request(
        &mut s,
        &mut env,
        &clock,
        method::CHANNEL_BIND,
        &[ch(0x4000), peer_attr("10.0.0.1:5000")],
    );
    assert_eq!(code(&r), Some(403));
    let r = c.request(
        &mut s,
        &mut env,
        &clock,
        method::CHANNEL_BIND,
        &[ch(0x4000), peer_attr(PEER)],
    );
    assert_eq!(class(&r), Class::Success);
    // Same binding again refreshes (uclient repeats identical ChannelBinds).
    let r = c.request(
        &mut s,
        &mut env,
        &clock,
        method::CHANNEL_BIND,
        &[ch(0x4000), peer_attr(PEER)],
    );
    assert_eq!(class(&r), Class::Success);
    // Number taken by another peer, or peer on another number: 400.
    let r = c.request(
        &mut s,
        &mut env,
        &clock,
        method::CHANNEL_BIND,
        &[ch(0x4000), peer_attr(PEER2)],
    );
    assert_eq!(code(&r), Some(400));
    let r = c.request(
        &mut s,
        &mut env,
        &clock,
        method::CHANNEL_BIND,
        &[ch(0x4001), peer_attr(PEER)],
    );
    assert_eq!(code(&r), Some(400));

    match c.send(&mut s, &mut env, &clock, &channel_data(0x4000, b"media")) {
        Reply::Forward(_, peer, data) => {
            assert_eq!((peer, data.as_slice()), (sa(PEER), &b"media"[..]))
        }
        _ => panic!("channel data forwarded"),
    }
    // Unbound channel: dropped.
    assert!(matches!(
        c.send(&mut s, &mut env, &clock, &channel_data(0x4002, b"x")),
        Reply::None
    ));
    // Peer -> client uses the channel.
    let (to, msg) = from_peer(&mut s, &env, &clock, PEER, b"back").unwrap();
    assert_eq!(to, c.key);
    assert_eq!(msg, channel_data(0x4000, b"back"));
    // Another port on the permitted IP has no channel: Data indication.
    let (_, msg) = from_peer(&mut s, &env, &clock, "93.184.216.34:1", b"x").unwrap();
    assert!(stun::looks_like_stun(&msg));

    // The binding installed a 300 s permission; refresh it so that only the channel expires.
    clock.secs = 290;
    c.permit(&mut s, &mut env, &clock, PEER);
    c.request(&mut s, &mut env, &clock, method::REFRESH, &[]);
    clock.secs = 580;
    c.permit(&mut s, &mut env, &clock, PEER);
    clock.secs = 601;
    s.handle_timeout(clock.now(), &mut env);
    assert!(
        matches!(
            c.send(&mut s, &mut env, &clock, &channel_data(0x4000, b"x")),
            Reply::None
        ),
        "channel expired"
    );
    let (_, msg) = from_peer(&mut s, &env, &clock, PEER, b"x").unwrap();
    assert!(
        stun::looks_like_stun(&msg),
        "falls back to a Data indication while the permission lives"
    );
    // After expiry the number can be bound to another peer.
    let r = c.request(
        &mut s,
        &mut env,
        &clock,
        method::CHANNEL_BIND,
        &[ch(0x4000), peer_attr(PEER2)],
    );
    assert_eq!(class(&r), Class::Success);
}

#[test]
fn channel_data_with_udp_padding_is_accepted() {
    let (mut s, mut env, clock) = setup();
    let mut c = Client::rest(40000, "a");
    c.allocate(&mut s, &mut env, &clock, &[]);
    c.request(
        &mut s,
        &mut env,
        &clock,
        method::CHANNEL_BIND,
        &[
            (attr::CHANNEL_NUMBER, vec![0x40, 0x10, 0, 0]),
            peer_attr(PEER),
        ],
    );
    let mut pkt = channel_data(0x4010, b"abc");
    pkt.push(0); // padded to 8 as `turnutils_uclient -D` does
    match c.send(&mut s, &mut env, &clock, &pkt) {
        Reply::Forward(_, _, data) => assert_eq!(data, b"abc"),
        _ => panic!("forwarded"),
    }
    // A length that overruns the datagram is dropped.
    let mut bad = channel_data(0x4010, b"abc");
    bad[3] = 200;
    assert!(matches!(
        c.send(&mut s, &mut env, &clock, &bad),
        Reply::None
    ));
}

#[test]
fn allocation_expires_on_time_with_its_socket_and_quota() {
    let (mut s, mut env, mut clock) = setup();
    let mut c = Client::rest(40000, "a");
    c.allocate(&mut s, &mut env, &clock, &[]);
    c.request(
        &mut s,
        &mut env,
        &clock,
        method::CHANNEL_BIND,
        &[(attr::CHANNEL_NUMBER, vec![0x40, 0, 0, 0]), peer_attr(PEER)],
    );
    assert_eq!(env.open.len(), 1);
    // Deadlines: permission 300, channel and allocation 600.
    assert_eq!(
        s.poll_timeout(),
        Some(clock.now().mono + Duration::from_secs(300))
    );
    clock.secs = 599;
    s.handle_timeout(clock.now(), &mut env);
    assert_eq!(env.open.len(), 1);
    clock.secs = 600;
    s.handle_timeout(clock.now(), &mut env);
    assert!(env.open.is_empty());
    assert_eq!(env.closed, 1);
    assert_eq!(s.allocation_count(), 0);
    assert_eq!(s.shared().allocations(), 0);
    assert_eq!(s.stats().allocations_expired, 1);
    assert_eq!(s.poll_timeout(), None, "no timers left behind");
}

#[test]
fn refresh_extends_past_the_first_timer() {
    let (mut s, mut env, mut clock) = setup();
    let mut c = Client::rest(40000, "a");
    c.allocate(&mut s, &mut env, &clock, &[]);
    clock.secs = 500;
    c.request(&mut s, &mut env, &clock, method::REFRESH, &[]);
    clock.secs = 700;
    s.handle_timeout(clock.now(), &mut env);
    assert_eq!(s.allocation_count(), 1, "refreshed at 500 for 600 s");
    clock.secs = 1100;
    s.handle_timeout(clock.now(), &mut env);
    assert_eq!(s.allocation_count(), 0);
}

#[test]
fn even_port_reservation_token_pair() {
    let (mut s, mut env, mut clock) = setup();
    let mut rtp = Client::rest(40000, "a");
    let r = rtp.allocate(&mut s, &mut env, &clock, &[(attr::EVEN_PORT, vec![0x80])]);
    assert_eq!(class(&r), Class::Success);
    let port = relayed(&r)[0].port();
    assert_eq!(port % 2, 0);
    let token = find_attr(&r, attr::RESERVATION_TOKEN)
        .expect("token")
        .to_vec();
    assert_eq!(s.shared().reservations_held(), 1, "the next port is held");
    let mut rtcp = Client::rest(40001, "a");
    let r2 = rtcp.allocate(
        &mut s,
        &mut env,
        &clock,
        &[(attr::RESERVATION_TOKEN, token.clone())],
    );
    assert_eq!(class(&r2), Class::Success, "{:?}", code(&r2));
    assert_eq!(relayed(&r2)[0].port(), port + 1);
    assert_eq!(s.shared().reservations_held(), 0, "claimed: no longer held");
    assert!(env.parked.is_empty(), "the parked socket was adopted");
    // A token is good once.
    let mut third = Client::rest(40002, "a");
    assert_eq!(
        code(&third.allocate(
            &mut s,
            &mut env,
            &clock,
            &[(attr::RESERVATION_TOKEN, token)]
        )),
        Some(508)
    );
    // EVEN-PORT without R: even port, no token.
    let mut c = Client::rest(40003, "b");
    let r = c.allocate(&mut s, &mut env, &clock, &[(attr::EVEN_PORT, vec![0])]);
    assert_eq!(relayed(&r)[0].port() % 2, 0);
    assert!(find_attr(&r, attr::RESERVATION_TOKEN).is_none());
    // A reservation nobody claims is released by the core's timer after 30 s.
    let mut r = Client::rest(40004, "c");
    r.allocate(&mut s, &mut env, &clock, &[(attr::EVEN_PORT, vec![0x80])]);
    assert_eq!((s.shared().reservations_held(), env.parked.len()), (1, 1));
    clock.secs += RESERVATION_SECS - 1;
    s.handle_timeout(clock.now(), &mut env);
    assert_eq!(env.parked.len(), 1, "still held before 30 s");
    clock.secs += 1;
    assert!(s.poll_timeout().is_some_and(|t| t <= clock.now().mono));
    s.handle_timeout(clock.now(), &mut env);
    assert_eq!((s.shared().reservations_held(), env.parked.len()), (0, 0));
}

#[test]
fn address_families() {
    let (mut s, mut env, clock) = setup();
    let mut c = Client::rest(40000, "a");
    let r = c.allocate(
        &mut s,
        &mut env,
        &clock,
        &[(attr::ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0])],
    );
    let addrs = relayed(&r);
    assert_eq!(addrs.len(), 2, "dual allocation");
    assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6());
    // Peers of both families are accepted.
    let r = c.request(
        &mut s,
        &mut env,
        &clock,
        method::CREATE_PERMISSION,
        &[peer_attr(PEER), peer_attr("[2606:4700::1]:80")],
    );
    assert_eq!(class(&r), Class::Success);

    // coturn's draft codepoint for ADDITIONAL-ADDRESS-FAMILY works the same, with EVEN-PORT
    // without the R bit as uclient -Z sends it.
    let mut z = Client::rest(40009, "z");
    let r = z.allocate(
        &mut s,
        &mut env,
        &clock,
        &[
            (attr::EVEN_PORT, vec![0]),
            (attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT, vec![2, 0, 0, 0]),
        ],
    );
    assert_eq!(relayed(&r).len(), 2);
    let r = z.request(
        &mut s,
        &mut env,
        &clock,
        method::REFRESH,
        &[(attr::REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0])],
    );
    assert_eq!(
        class(&r),
        Class::Success,
        "refreshing the IPv6 half of a dual allocation"
    );

    // IPv6 unavailable: IPv4 only, with ADDRESS-ERROR-CODE.
    env.v6_broken = true;
    let mut c = Client::rest(40001, "b");
    let r = c.allocate(
        &mut s,
        &mut env,
        &clock,
        &[(attr::ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0])],
    );
    assert_eq!(class(&r), Class::Success);
    assert_eq!(relayed(&r).len(), 1);
    let e = find_attr(&r, attr::ADDRESS_ERROR_CODE).expect("ADDRESS-ERROR-CODE");
    assert_eq!((e[0], e[2], e[3]), (2, 4, 40));

    // No IPv6 relay configured: 440 for REQUESTED-ADDRESS-FAMILY IPv6.
    let mut cfg = config();
    cfg.relays[1].clear();
    let mut s = server_with(cfg);
    let mut c = Client::rest(40002, "c");
    let r = c.allocate(
        &mut s,
        &mut env,
        &clock,
        &[(attr::REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0])],
    );
    assert_eq!(code(&r), Some(440));
}

#[test]
fn dont_fragment_reaches_the_driver() {
    let (mut s, mut env, clock) = setup();
    let mut c = Client::rest(40000, "a");
    c.allocate(&mut s, &mut env, &clock, &[(attr::DONT_FRAGMENT, vec![])]);
    assert!(env.open.values().next().unwrap().1);
}

#[test]
fn unknown_comprehension_required_attribute_is_420() {
    let (mut s, mut env, clock) = setup();
    let mut c = Client::rest(40000, "a");
    let r = c.allocate(&mut s, &mut env, &clock, &[(0x0031, vec![1, 2, 3, 4])]);
    assert_eq!(code(&r), Some(420));
    assert_eq!(
        find_attr(&r, attr::UNKNOWN_ATTRIBUTES),
        Some(&[0x00, 0x31][..])
    );
    // Comprehension-optional unknowns are ignored.
    let r = c.allocate(&mut s, &mut env, &clock, &[(0x8031, vec![1, 2, 3, 4])]);
    assert_eq!(class(&r), Class::Success);
}

#[test]
fn unknown_method_is_400_and_responses_are_ignored() {
    let (mut s, mut env, clock) = setup();
    let c = Client::rest(40000, "a");
    let req = c.build(0x0ff, [3; 12], &[], false, false);
    assert_eq!(
        code(&c.send(&mut s, &mut env, &clock, &req).bytes()),
        Some(400)
    );
    let mut buf = [0u8; 64];
    let n = Writer::new(&mut buf, method::BINDING, Class::Success, &[3; 12])
        .unwrap()
        .finish();
    assert!(matches!(
        c.send(&mut s, &mut env, &clock, &buf[..n]),
        Reply::None
    ));
}

#[test]
fn malformed_input_never_panics() {
    let (mut s, mut env, clock) = setup();
    let mut c = Client::rest(40000, "a");
    c.allocate(&mut s, &mut env, &clock, &[]);
    let good = c.build(method::REFRESH, [4; 12], &[], true, true);
    // Every truncation and every single-byte corruption of a valid request.
    for cut in 0..good.len() {
        c.send(&mut s, &mut env, &clock, &good[..cut]);
    }
    for i in 0..good.len() {
        for x in [0x01, 0x80, 0xff] {
            let mut b = good.clone();
            b[i] ^= x;
            c.send(&mut s, &mut env, &clock, &b);
        }
    }
    // Deterministic pseudo-random datagrams.
    let mut rng = XorShift::new(0x1234_5678);
    for _ in 0..20_000 {
        let seed = rng.next_u64() as u32;
        let len = (seed % 200) as usize;
        let mut pkt: Vec<u8> = (0..len)
            .map(|i| (seed.rotate_left(i as u32) & 0xff) as u8)
            .collect();
        if len >= 8 && seed % 3 == 0 {
            pkt[4..8].copy_from_slice(&stun::MAGIC_COOKIE.to_be_bytes());
            pkt[0] &= 0x3f;
        }
        c.send(&mut s, &mut env, &clock, &pkt);
    }
    assert_eq!(s.allocation_count(), 1);
}

#[test]
fn a_credential_selects_its_shaping_profile() {
    let mut cfg = config();
    cfg.shaping_profiles = vec!["bulk".into(), "voice".into()];
    let (mut s, mut env, clock) = (server_with(cfg), FakeEnv::default(), Clock::new());
    for (port, username, want) in [
        (40000u16, format!("{}:a;s=voice", T0 + 60), 2u8),
        (40001, format!("{}:b", T0 + 60), 0),
        (40002, format!("{}:c;s=nonexistent", T0 + 60), 0),
    ] {
        let mut c = Client::new(port, username, SECRET);
        assert_eq!(
            class(&c.allocate(&mut s, &mut env, &clock, &[])),
            Class::Success
        );
        c.permit(&mut s, &mut env, &clock, PEER);
        let id = *env
            .open
            .iter()
            .find(|(_, (b, _))| b.port() == env.next_port - 2)
            .unwrap()
            .0;
        let mut buf = vec![0u8; HEADROOM + 8 + TAILROOM];
        let d = s
            .handle_peer(clock.now(), id, sa(PEER), &mut buf, HEADROOM..HEADROOM + 8)
            .unwrap();
        assert_eq!((d.client, d.profile), (c.key, want));
    }
    // The profile is part of the signed username: the quota still counts the id.
    assert_eq!(auth::quota_key(&format!("{}:a;s=voice", T0)), "a");
}

/// A profile that requires TLS: its credentials allocate over TLS only (403 over UDP and TCP,
/// counted); other profiles and the node's policy are not affected.
#[test]
fn a_tls_only_profile_refuses_udp_and_tcp() {
    let mut cfg = config();
    cfg.shaping_profiles = vec!["private".into(), "voice".into()];
    cfg.tls_only_profiles = vec![true, false];
    let (mut s, mut env, clock) = (server_with(cfg), FakeEnv::default(), Clock::new());
    let private = format!("{}:p;s=private", T0 + 60);
    for (port, transport, username, ok) in [
        (40000u16, Transport::Udp, private.clone(), false),
        (40001, Transport::Tcp, private.clone(), false),
        (40002, Transport::Tls, private.clone(), true),
        (
            40003,
            Transport::Udp,
            format!("{}:v;s=voice", T0 + 60),
            true,
        ),
        (40004, Transport::Udp, format!("{}:n", T0 + 60), true),
    ] {
        let mut c = Client::new(port, username, SECRET);
        c.key.transport = transport;
        let r = c.allocate(&mut s, &mut env, &clock, &[]);
        if ok {
            assert_eq!(class(&r), Class::Success, "{transport:?}");
        } else {
            assert_eq!(code(&r), Some(403), "{transport:?}");
        }
    }
    assert_eq!(
        s.stats().allocations_refused[Refusal::TlsRequired as usize],
        2
    );
    assert_eq!(s.allocation_count(), 3);
}

#[test]
fn a_zoned_relay_accepts_only_credentials_for_its_zone() {
    let mut cfg = config();
    cfg.zone = Some("eu".into());
    let creds = Credentials {
        secrets: vec![SECRET.to_vec()],
        static_users: vec![("dev".into(), "devpass".into())],
        ..Default::default()
    };
    let shared = Shared::new(
        cfg,
        creds,
        NonceKey::new(b"n"),
        PeerFilter::new(&[], &[]),
        Redactor::with_secret(b"r", false),
    );
    let mut s = Server::new(Arc::new(shared));
    let (mut env, clock) = (FakeEnv::default(), Clock::new());
    for (port, claims, want) in [
        (40000u16, vec![("z", "eu")], None),
        (40001, vec![("z", "us")], Some(403)),
        (40002, vec![], Some(403)),
        (40003, vec![("s", "voice"), ("z", "eu")], None),
    ] {
        let mut c = Client::new(
            port,
            auth::username_with_claims(T0 + 60, "u", &claims),
            SECRET,
        );
        let r = c.allocate(&mut s, &mut env, &clock, &[]);
        assert_eq!(code(&r), want, "{claims:?}");
        if want.is_some() {
            assert_eq!(
                c.verify(&r),
                Some(Integrity::Sha1),
                "refused after authenticating: signed"
            );
        }
    }
    // Every REST form the MAC accepts must carry the claim: an empty id (`<expiry>:`) and a
    // bare expiry (`<expiry>`) included.
    for (port, username) in [
        (40004u16, format!("{}:", T0 + 60)),
        (40005, format!("{}", T0 + 60)),
    ] {
        let mut c = Client::new(port, username.clone(), SECRET);
        let r = c.allocate(&mut s, &mut env, &clock, &[]);
        assert_eq!(code(&r), Some(403), "{username:?} has no zone claim");
        assert_eq!(
            c.verify(&r),
            Some(Integrity::Sha1),
            "{username:?} authenticated"
        );
    }
    let mut dev = Client::rest(40009, "x");
    dev.username = "dev".into();
    dev.password = "devpass".into();
    assert_eq!(
        class(&dev.allocate(&mut s, &mut env, &clock, &[])),
        Class::Success,
        "static dev users are exempt"
    );
    assert_eq!(s.allocation_count(), 3);
}

fn bind_channel(
    c: &mut Client,
    s: &mut Server,
    env: &mut FakeEnv,
    clock: &Clock,
    number: u16,
    peer: &str,
) -> Vec<u8> {
    let mut n = vec![0u8; 4];
    n[..2].copy_from_slice(&number.to_be_bytes());
    let attrs = [(attr::CHANNEL_NUMBER, n), peer_attr(peer)];
    c.request(s, env, clock, method::CHANNEL_BIND, &attrs)
}

fn delete_allocation(c: &mut Client, s: &mut Server, env: &mut FakeEnv, clock: &Clock) {
    let r = c.request(
        s,
        env,
        clock,
        method::REFRESH,
        &[(attr::LIFETIME, 0u32.to_be_bytes().to_vec())],
    );
    assert_eq!(class(&r), Class::Success, "{:?}", code(&r));
}

/// Issue 14 §4: permissions and channels per allocation are capped (508 beyond, nothing
/// installed), refreshing what is held is not growth, and expiry frees room.
#[test]
fn permissions_and_channels_are_capped_per_allocation() {
    let mut cfg = config();
    cfg.max_permissions = 4;
    cfg.max_channels = 2;
    let mut s = server_with(cfg);
    let (mut env, mut clock) = (FakeEnv::default(), Clock::new());
    let mut c = Client::rest(40000, "greedy");
    allocate_ok(&mut c, &mut s, &mut env, &clock);
    for i in 0..4 {
        let r = c.permit(&mut s, &mut env, &clock, &format!("93.184.216.{i}:1"));
        assert_eq!(class(&r), Class::Success, "{i}: {:?}", code(&r));
    }
    // Another port of a held IP refreshes that permission.
    let r = c.permit(&mut s, &mut env, &clock, "93.184.216.0:9");
    assert_eq!(class(&r), Class::Success);
    let r = c.permit(&mut s, &mut env, &clock, "93.184.216.9:1");
    assert_eq!(code(&r), Some(508));
    // All or nothing: a request naming a held IP and a new one installs neither.
    let attrs = [peer_attr("93.184.216.1:1"), peer_attr("93.184.216.10:1")];
    let r = c.request(&mut s, &mut env, &clock, method::CREATE_PERMISSION, &attrs);
    assert_eq!(code(&r), Some(508));
    assert_eq!(s.occupancy().permissions[0][0], 4);

    // Channels: two; a rebind of a held one refreshes; a third, or one to a new IP, is 508.
    let r = bind_channel(&mut c, &mut s, &mut env, &clock, 0x4000, "93.184.216.0:1");
    assert_eq!(class(&r), Class::Success);
    let r = bind_channel(&mut c, &mut s, &mut env, &clock, 0x4001, "93.184.216.1:1");
    assert_eq!(class(&r), Class::Success);
    let r = bind_channel(&mut c, &mut s, &mut env, &clock, 0x4000, "93.184.216.0:1");
    assert_eq!(class(&r), Class::Success, "a refresh");
    let r = bind_channel(&mut c, &mut s, &mut env, &clock, 0x4002, "93.184.216.2:1");
    assert_eq!(code(&r), Some(508));
    assert_eq!(s.stats().permissions_refused, 3);
    assert_eq!(s.occupancy().channels[0][0], 2);

    // Permissions last 300 s; channels 600 s refresh theirs only on a rebind. After 301 s
    // the two permissions not renewed by a channel bind are gone, and room is back.
    clock.secs += 301;
    s.handle_timeout(clock.now(), &mut env);
    assert_eq!(s.occupancy().permissions[0][0], 0);
    let r = c.permit(&mut s, &mut env, &clock, "93.184.216.9:1");
    assert_eq!(class(&r), Class::Success);
}

/// Issue 14 §4: an EVEN-PORT R-bit reservation is a unit of the user's and the node's quota,
/// and it ends with the allocation that made it (not 30 s later), unless claimed; a claim by
/// the same user takes over that unit.
#[test]
fn reservations_count_in_quotas_and_end_with_their_allocation() {
    let even_r = [(attr::EVEN_PORT, vec![0x80])];
    let mut cfg = config();
    cfg.user_quota = 1;
    let mut s = server_with(cfg.clone());
    let (mut env, clock) = (FakeEnv::default(), Clock::new());
    // Quota 1: the R bit would hold a second port.
    let mut c = Client::rest(40000, "solo");
    let r = c.allocate(&mut s, &mut env, &clock, &even_r);
    assert_eq!(code(&r), Some(486));
    assert_eq!(
        (s.shared().allocations(), env.open.len(), env.parked.len()),
        (0, 0, 0),
        "nothing held after a refusal"
    );

    cfg.user_quota = 2;
    cfg.total_quota = 3;
    let mut s = server_with(cfg);
    let mut env = FakeEnv::default();
    let mut c = Client::rest(40000, "duo");
    let r = c.allocate(&mut s, &mut env, &clock, &even_r);
    assert_eq!(class(&r), Class::Success, "{:?}", code(&r));
    assert_eq!(
        s.shared().allocations(),
        2,
        "the allocation and its reservation"
    );
    let mut d = Client::rest(40001, "duo");
    assert_eq!(code(&d.allocate(&mut s, &mut env, &clock, &[])), Some(486));
    // The node's quota counts it too: one unit left for everyone else.
    let mut e = Client::rest(40002, "other");
    allocate_ok(&mut e, &mut s, &mut env, &clock);
    let mut f = Client::rest(40003, "third");
    assert_eq!(code(&f.allocate(&mut s, &mut env, &clock, &[])), Some(508));
    // Deleting the allocation frees its reservation at once: port and both units.
    delete_allocation(&mut c, &mut s, &mut env, &clock);
    assert_eq!(
        (
            s.shared().reservations_held(),
            env.parked.len(),
            s.shared().allocations()
        ),
        (0, 0, 1)
    );
    // A claim by the same user takes over the reservation's unit: two allocations, quota 2.
    let r = c.allocate(&mut s, &mut env, &clock, &even_r);
    let token = find_attr(&r, attr::RESERVATION_TOKEN)
        .expect("token")
        .to_vec();
    let r = d.allocate(
        &mut s,
        &mut env,
        &clock,
        &[(attr::RESERVATION_TOKEN, token)],
    );
    assert_eq!(class(&r), Class::Success, "{:?}", code(&r));
    assert_eq!(
        (s.shared().allocations(), s.shared().reservations_held()),
        (3, 0)
    );
    // The claimed port now belongs to its own allocation: deleting the first leaves it.
    delete_allocation(&mut c, &mut s, &mut env, &clock);
    assert_eq!((s.shared().allocations(), env.open.len()), (2, 2));
}

/// Issue 14 §1: a Send indication whose IP holds a permission still never goes to one of the
/// node's own addresses (the port is the client's choice per packet), and a reload's new
/// `deny` cuts existing permissions and channels to the range it names at once.
#[test]
fn own_addresses_refused_per_datagram_and_reloads_cut_existing_permissions() {
    let (mut s, mut env, clock) = setup();
    // Relay to relay: the node's own IP (203.0.113.5, advertised; a documentation range the
    // operator allows here, as if it were public) can hold a permission.
    let test_net: Cidr = "203.0.113.0/24".parse().unwrap();
    let filter = PeerFilter::new(&[], &[test_net])
        .with_own_addresses(
            &[sa("127.0.0.1:3478")],
            &["127.0.0.1".parse().unwrap(), "203.0.113.5".parse().unwrap()],
            (20000, 29999),
        )
        .relay_to_relay(true);
    let live = |f: PeerFilter| Live {
        bandwidth: config().bandwidth,
        credentials: Credentials {
            secrets: vec![SECRET.to_vec(), OLD_SECRET.to_vec()],
            static_users: vec![],
            ..Default::default()
        },
        filter: f,
    };
    s.shared().replace_live(live(filter.clone()));
    let mut c = Client::rest(40000, "a");
    allocate_ok(&mut c, &mut s, &mut env, &clock);
    assert_eq!(
        class(&c.permit(&mut s, &mut env, &clock, "203.0.113.5:20001")),
        Class::Success
    );
    assert_eq!(
        class(&c.permit(&mut s, &mut env, &clock, PEER)),
        Class::Success
    );
    let send = |c: &mut Client, s: &mut Server, env: &mut FakeEnv, to: &str| {
        let mut buf = vec![0u8; 200];
        let mut w = Writer::new(&mut buf, method::SEND, Class::Indication, &c.txid()).unwrap();
        w.xor_address(attr::XOR_PEER_ADDRESS, sa(to)).unwrap();
        w.attr(attr::DATA, b"x").unwrap();
        let n = w.finish();
        c.send(s, env, &clock, &buf[..n])
    };
    assert!(matches!(
        send(&mut c, &mut s, &mut env, "203.0.113.5:20001"),
        Reply::Forward(..)
    ));
    for own in [
        "203.0.113.5:3478",
        "203.0.113.5:22",
        "[::ffff:203.0.113.5]:9100",
    ] {
        assert!(
            matches!(send(&mut c, &mut s, &mut env, own), Reply::None),
            "{own}"
        );
    }
    // (The mapped form holds no permission of its own: refused before the gate.)
    assert_eq!(s.stats().peer_sends_denied, 2);
    let r = bind_channel(&mut c, &mut s, &mut env, &clock, 0x4000, PEER);
    assert_eq!(class(&r), Class::Success);

    // A reload denies the peer's range: its permission and channel go, at the next packet.
    let denied = PeerFilter::new(&["93.184.216.0/24".parse().unwrap()], &[test_net])
        .with_own_addresses(
            &[sa("127.0.0.1:3478")],
            &["203.0.113.5".parse().unwrap()],
            (20000, 29999),
        )
        .relay_to_relay(true);
    s.shared().replace_live(live(denied));
    assert!(matches!(send(&mut c, &mut s, &mut env, PEER), Reply::None));
    assert_eq!(s.occupancy().channels[0][0], 0);
    assert_eq!(
        s.occupancy().permissions[0][0],
        1,
        "the relay-to-relay one stays"
    );
    assert!(matches!(
        send(&mut c, &mut s, &mut env, "203.0.113.5:20001"),
        Reply::Forward(..)
    ));
}

/// Issue 14 §2: what a spoofed source can draw. Every reply to an unauthenticated request is
/// at most 3× the request (QUIC's anti-amplification bound; a 401 was 5.2× before), carries no
/// reason phrase or SOFTWARE, and a source prefix gets its burst, then its rate, of them.
#[test]
fn unauthenticated_replies_are_small_and_rate_limited_per_prefix() {
    let mut cfg = config();
    cfg.realm = "veil".into(); // the default realm
    cfg.software = Some("veil 1.0".into());
    cfg.unauthenticated_rate = 20;
    cfg.unauthenticated_burst = 40;
    let mut s = server_with(cfg);
    let (mut env, mut clock) = (FakeEnv::default(), Clock::new());
    let mut c = Client::rest(40000, "a");
    let transport = (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]);
    let cases = [
        (method::ALLOCATE, vec![], 400),
        (method::ALLOCATE, vec![transport], 401),
        (method::REFRESH, vec![], 437),
        (method::CREATE_PERMISSION, vec![], 437),
        (method::CHANNEL_BIND, vec![], 437),
        (0x00a, vec![], 400),
    ];
    for (m, attrs, want) in &cases {
        let t = c.txid();
        let req = c.build(*m, t, attrs, false, false);
        let resp = c.send(&mut s, &mut env, &clock, &req).bytes();
        assert_eq!(code(&resp), Some(*want), "method {m:#x}");
        assert!(
            resp.len() <= 3 * req.len(),
            "method {m:#x}: {} bytes for {}",
            resp.len(),
            req.len()
        );
        assert_eq!(find_attr(&resp, attr::SOFTWARE), None);
        assert_eq!(
            find_attr(&resp, attr::ERROR_CODE).map(|v| v.len()),
            Some(4),
            "no reason"
        );
    }
    let t = c.txid();
    let req = c.build(method::BINDING, t, &[], false, false);
    let resp = c.send(&mut s, &mut env, &clock, &req).bytes();
    assert_eq!((req.len(), resp.len()), (20, 32));
    // The 401 in numbers: 20 header + 8 ERROR-CODE + 8 REALM + 36 NONCE + 12 algorithms.
    let t = c.txid();
    let req = c.build(
        method::ALLOCATE,
        t,
        &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
        false,
        false,
    );
    assert_eq!(c.send(&mut s, &mut env, &clock, &req).bytes().len(), 84);

    // 7 answered so far in this second (the Binding drew on its own budget); the burst is 40,
    // then 20 per second.
    let mut answered = 7;
    let flood = |c: &mut Client, s: &mut Server, env: &mut FakeEnv, clock: &Clock, n: u32| {
        let mut got = 0;
        for i in 0..n {
            c.key.addr.set_port(10_000 + (i % 50_000) as u16); // any port: one prefix
            let t = c.txid();
            let req = c.build(
                method::ALLOCATE,
                t,
                &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
                false,
                false,
            );
            got += matches!(c.send(s, env, clock, &req), Reply::Bytes(_)) as u32;
        }
        got
    };
    answered += flood(&mut c, &mut s, &mut env, &clock, 1000);
    assert_eq!(answered, 40, "the burst");
    assert_eq!(s.stats().unauthenticated_suppressed, 1000 - 33);
    // Bindings have their own budget: a burst of 400 (one spent above), then 200 a second,
    // untouched by the challenges' flood.
    let bindings = |c: &mut Client, s: &mut Server, env: &mut FakeEnv, clock: &Clock, n: u32| {
        (0..n)
            .filter(|i| {
                c.key.addr.set_port(10_000 + (i % 50_000) as u16);
                let t = c.txid();
                let req = c.build(method::BINDING, t, &[], false, false);
                matches!(c.send(s, env, clock, &req), Reply::Bytes(_))
            })
            .count()
    };
    assert_eq!(bindings(&mut c, &mut s, &mut env, &clock, 1000), 399);
    clock.secs += 1;
    assert_eq!(
        flood(&mut c, &mut s, &mut env, &clock, 1000),
        20,
        "then the rate"
    );
    assert_eq!(bindings(&mut c, &mut s, &mut env, &clock, 1000), 200);
    // Another /64 or /32 is not affected; the same /64 is.
    let mut v6 = Client::rest(40000, "a");
    v6.key.addr = sa("[2001:db8:1:2::1]:5000");
    assert_eq!(flood(&mut v6, &mut s, &mut env, &clock, 100), 40);
    v6.key.addr = sa("[2001:db8:1:2:ffff:ffff:ffff:ffff]:5000");
    assert_eq!(
        flood(&mut v6, &mut s, &mut env, &clock, 10),
        0,
        "the same /64"
    );
    // Streams cannot be spoofed: not limited.
    c.key.transport = Transport::Tcp;
    assert_eq!(flood(&mut c, &mut s, &mut env, &clock, 100), 100);
    // An authenticated client is not limited, however small the budget of its prefix.
    let mut cfg = config();
    cfg.unauthenticated_rate = 1;
    cfg.unauthenticated_burst = 1;
    let mut s = server_with(cfg);
    let mut ok = Client::rest(40100, "fine");
    let r = ok.allocate(&mut s, &mut env, &clock, &[]);
    assert_eq!(class(&r), Class::Success, "{:?}", code(&r));
    for _ in 0..100 {
        assert_eq!(
            class(&ok.permit(&mut s, &mut env, &clock, PEER)),
            Class::Success
        );
    }
}

/// Puts credentials changed by `f` in force, as a reload does.
fn reload_credentials(s: &Server, f: impl FnOnce(&mut Credentials)) {
    let live = s.shared().live();
    let mut credentials = live.credentials.clone();
    f(&mut credentials);
    s.shared().replace_live(Live {
        credentials,
        filter: live.filter.clone(),
        bandwidth: live.bandwidth.clone(),
    });
}

/// Issue 14 §6: an allocation refreshed with its original key could outlive its credential
/// forever. With `max_session`, refreshes are granted up to the credential's expiry plus that
/// bound, and then it expires; a static user is not bounded (it has no expiry).
#[test]
fn allocations_end_max_session_past_their_credential() {
    let (mut s, mut env, mut clock) = setup();
    reload_credentials(&s, |c| c.max_session = Some(600));
    let mut c = Client::new(40000, format!("{}:short", T0 + 100), SECRET);
    let lifetime = |v: u32| vec![(attr::LIFETIME, v.to_be_bytes().to_vec())];
    let r = c.allocate(&mut s, &mut env, &clock, &lifetime(3600));
    assert_eq!(class(&r), Class::Success, "{:?}", code(&r));
    assert_eq!(lifetime_of(&r), 700, "cut to expiry + 600 s");
    clock.secs = 650;
    let r = c.request(&mut s, &mut env, &clock, method::REFRESH, &lifetime(600));
    assert_eq!(class(&r), Class::Success);
    assert_eq!(lifetime_of(&r), 50);
    clock.secs = 700;
    s.handle_timeout(clock.now(), &mut env);
    assert_eq!((s.allocation_count(), env.open.len()), (0, 0));
    let r = c.request(&mut s, &mut env, &clock, method::REFRESH, &lifetime(600));
    assert_eq!(code(&r), Some(437));
    // A shorter bound put in force by a reload brings a live allocation's end forward.
    let mut d = Client::new(40001, format!("{}:long", T0 + 2000), SECRET);
    let r = d.allocate(&mut s, &mut env, &clock, &lifetime(3600));
    assert_eq!(lifetime_of(&r), 1900, "to T0 + 2600");
    reload_credentials(&s, |c| c.max_session = Some(0));
    s.handle_timeout(clock.now(), &mut env);
    clock.secs = 2000;
    s.handle_timeout(clock.now(), &mut env);
    assert_eq!(s.allocation_count(), 0, "ended at its credential's expiry");
}

/// Issue 14 §6: revocation without rotating the secret. A reload listing a user id ends its
/// allocations at once and refuses its new ones (403), leaving everyone else's.
#[test]
fn revoked_users_lose_their_allocations_at_the_reload() {
    let (mut s, mut env, clock) = setup();
    let mut bad = Client::rest(40000, "mallory;z=eu");
    let mut good = Client::rest(40001, "alice");
    allocate_ok(&mut bad, &mut s, &mut env, &clock);
    allocate_ok(&mut good, &mut s, &mut env, &clock);
    reload_credentials(&s, |c| {
        c.revoked_users.insert("mallory".into());
    });
    s.handle_timeout(clock.now(), &mut env);
    assert_eq!((s.allocation_count(), env.open.len()), (1, 1));
    assert_eq!(s.stats().allocations_revoked, 1);
    assert_eq!(s.shared().allocations(), 1, "its quota is free");
    // A fresh credential for the same id, even with other claims: refused.
    let mut again = Client::rest(40002, "mallory");
    assert_eq!(
        code(&again.allocate(&mut s, &mut env, &clock, &[])),
        Some(403)
    );
    assert_eq!(s.stats().allocations_refused[Refusal::Revoked as usize], 1);
    let r = good.permit(&mut s, &mut env, &clock, PEER);
    assert_eq!(class(&r), Class::Success, "others go on");
}

/// Issue 14 §6: with `removed_secret_grace`, removing a secret ends the allocations it
/// admitted after the grace (a compromised secret); without it, they go on (a rotation).
#[test]
fn removing_a_secret_ends_its_allocations_after_the_grace() {
    let (mut s, mut env, mut clock) = setup();
    let mut old = Client::new(40000, format!("{}:o", T0 + 3600), OLD_SECRET);
    let mut new = Client::rest(40001, "n");
    allocate_ok(&mut old, &mut s, &mut env, &clock);
    allocate_ok(&mut new, &mut s, &mut env, &clock);
    // A rotation: the old secret goes, its allocations stay.
    reload_credentials(&s, |c| c.secrets = vec![SECRET.to_vec()]);
    s.handle_timeout(clock.now(), &mut env);
    clock.secs += 120;
    s.handle_timeout(clock.now(), &mut env);
    assert_eq!(s.allocation_count(), 2);
    // With a grace, the same removal ends them 60 s later, refreshes or not.
    reload_credentials(&s, |c| c.removed_secret_grace = Some(60));
    s.handle_timeout(clock.now(), &mut env);
    clock.secs += 30;
    let lifetime = vec![(attr::LIFETIME, 600u32.to_be_bytes().to_vec())];
    let r = old.request(&mut s, &mut env, &clock, method::REFRESH, &lifetime);
    assert_eq!(lifetime_of(&r), 30, "refreshed only up to the cut-off");
    clock.secs += 30;
    s.handle_timeout(clock.now(), &mut env);
    assert_eq!((s.allocation_count(), env.open.len()), (1, 1));
    assert_eq!(s.stats().allocations_revoked, 1);
    let r = new.permit(&mut s, &mut env, &clock, PEER);
    assert_eq!(
        class(&r),
        Class::Success,
        "the current secret's allocation goes on"
    );
}

fn send_indication(
    c: &mut Client,
    s: &mut Server,
    env: &mut FakeEnv,
    clock: &Clock,
    to: &str,
    len: usize,
) -> bool {
    let mut buf = vec![0u8; 1500];
    let t = c.txid();
    let mut w = Writer::new(&mut buf, method::SEND, Class::Indication, &t).unwrap();
    w.xor_address(attr::XOR_PEER_ADDRESS, sa(to)).unwrap();
    w.attr(attr::DATA, &vec![7u8; len]).unwrap();
    let n = w.finish();
    matches!(c.send(s, env, clock, &buf[..n]), Reply::Forward(..))
}

/// Issue 14 §5: a stolen credential must not make the node a bandwidth cannon. Each
/// allocation, per direction, gets its packets and bytes per second (a second's burst);
/// a user's allocations on a worker share the user's cap; a profile (`;s=`) has its own.
#[test]
fn bandwidth_caps_per_allocation_user_and_profile() {
    use crate::limiter::{BandwidthCaps, Caps};
    let mut cfg = config();
    let small = BandwidthCaps {
        allocation: Caps {
            bytes_per_second: 100_000,
            packets_per_second: 10,
        },
        user: Caps {
            bytes_per_second: 1_000_000,
            packets_per_second: 15,
        },
    };
    let video = BandwidthCaps {
        allocation: Caps {
            bytes_per_second: 3_000,
            packets_per_second: 1000,
        },
        user: Caps::default(),
    };
    cfg.shaping_profiles = vec!["video".into()];
    cfg.bandwidth = vec![small, video];
    let mut s = server_with(cfg);
    let (mut env, mut clock) = (FakeEnv::default(), Clock::new());
    let mut a = Client::rest(40000, "u");
    allocate_and_permit(&mut a, &mut s, &mut env, &clock);
    let sent =
        |c: &mut Client, s: &mut Server, env: &mut FakeEnv, clock: &Clock, n: usize, len: usize| {
            (0..n)
                .filter(|_| send_indication(c, s, env, clock, PEER, len))
                .count()
        };
    assert_eq!(
        sent(&mut a, &mut s, &mut env, &clock, 50, 100),
        10,
        "10 packets/s"
    );
    // The other direction has its own budget.
    let back = (0..50)
        .filter(|_| from_peer(&mut s, &env, &clock, PEER, b"x").is_some())
        .count();
    assert_eq!(back, 10);
    assert_eq!(s.stats().bandwidth_dropped, [40, 40]);
    clock.secs += 1;
    assert_eq!(
        sent(&mut a, &mut s, &mut env, &clock, 50, 100),
        10,
        "refilled"
    );
    // A second allocation of the same user: the user's 15/s is shared (a fresh user bucket
    // had 15 at first; 10 taken by `a` this second already: 5 left for `b`).
    let mut b = Client::rest(40001, "u");
    allocate_and_permit(&mut b, &mut s, &mut env, &clock);
    assert_eq!(sent(&mut b, &mut s, &mut env, &clock, 50, 100), 5);
    // Another user is not affected.
    let mut other = Client::rest(40002, "v");
    allocate_and_permit(&mut other, &mut s, &mut env, &clock);
    assert_eq!(sent(&mut other, &mut s, &mut env, &clock, 50, 100), 10);
    // The video profile: 3000 bytes/s binds, not packets.
    let mut v = Client::rest(40003, "w;s=video");
    allocate_and_permit(&mut v, &mut s, &mut env, &clock);
    assert_eq!(sent(&mut v, &mut s, &mut env, &clock, 50, 1000), 3);
    // A reload raises the node's caps for allocations already running.
    let live = s.shared().live();
    s.shared().replace_live(Live {
        credentials: live.credentials.clone(),
        filter: live.filter.clone(),
        bandwidth: vec![BandwidthCaps::default(), video],
    });
    clock.secs += 1;
    assert_eq!(
        sent(&mut a, &mut s, &mut env, &clock, 50, 100),
        50,
        "no caps now"
    );
}
