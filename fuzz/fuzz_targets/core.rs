//! The whole sans-I/O server fed with arbitrary datagrams from clients and peers, with time
//! moving: it never panics, and its bookkeeping stays consistent.
//!
//! The input is a script: each step picks an actor (one of a few clients, a peer, or the clock)
//! and carries a datagram. A valid authenticated Allocate is offered at the start of each run so
//! that the fuzzer reaches allocation states without having to forge an HMAC.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use veil_proto::auth::{self, Credentials, Key, NonceKey};
use veil_proto::peer_filter::PeerFilter;
use veil_proto::privacy::Redactor;
use veil_proto::server::{
    Action, ClientKey, HEADROOM, Live, Now, RelayId, Server, ServerConfig, Shared, TAILROOM,
};
use veil_proto::stun::{Class, Integrity, Writer, attr, method};
use veil_proto::testing::FakeEnv;

const UNIX: u64 = 1_800_000_000;
const SECRET: &[u8] = b"fuzz-secret";

fn clients() -> [ClientKey; 3] {
    [40000, 40001, 40002].map(|p| ClientKey {
        listener: 0,
        transport: veil_proto::server::Transport::Udp,
        addr: SocketAddr::from(([192, 0, 2, 1], p)),
    })
}

/// A valid Allocate for client 0 (its nonce is bound to its 5-tuple).
fn seed_allocate(nonces: &NonceKey) -> Vec<u8> {
    static SEED: OnceLock<Vec<u8>> = OnceLock::new();
    SEED.get_or_init(|| {
        let (user, pass) = auth::mint(SECRET, UNIX + 86_400, Some("f"));
        let key = Key::derive(auth::ALG_MD5, user.as_bytes(), b"fuzz", pass.as_bytes());
        let nonce = nonces.mint((UNIX + 3600) as u32, 0, clients()[0].addr);
        let mut buf = vec![0u8; 512];
        let mut w = Writer::new(&mut buf, method::ALLOCATE, Class::Request, &[9; 12]).unwrap();
        w.u32(attr::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.attr(attr::USERNAME, user.as_bytes()).unwrap();
        w.attr(attr::REALM, b"fuzz").unwrap();
        w.attr(attr::NONCE, &nonce).unwrap();
        w.integrity(Integrity::Sha1, key.as_bytes()).unwrap();
        let n = w.finish();
        buf.truncate(n);
        buf
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    // Small caps, so that inputs reach every limit: permissions, channels, bandwidth, the
    // unauthenticated rate.
    let caps = veil_proto::limiter::BandwidthCaps {
        allocation: veil_proto::limiter::Caps {
            bytes_per_second: 4000,
            packets_per_second: 20,
        },
        user: veil_proto::limiter::Caps {
            bytes_per_second: 6000,
            packets_per_second: 30,
        },
    };
    let cfg = ServerConfig {
        realm: "fuzz".into(),
        user_quota: 4,
        source_quota: 6,
        total_quota: 8,
        max_permissions: 4,
        max_channels: 4,
        unauthenticated_rate: 5,
        unauthenticated_burst: 10,
        bandwidth: vec![caps],
        ..veil_proto::testing::config()
    };
    let nonces = NonceKey::new(b"fuzz-node");
    let seed = seed_allocate(&nonces);
    let creds = Credentials {
        secrets: vec![SECRET.to_vec()],
        static_users: vec![],
        max_session: Some(60),
        removed_secret_grace: Some(10),
        max_validity: Some(86_400),
        ..Default::default()
    };
    let shared = Arc::new(Shared::new(
        cfg,
        creds,
        nonces,
        PeerFilter::new(&[], &[]),
        Redactor::with_secret(b"r", false),
    ));
    let mut server = Server::new(shared.clone());
    let mut env = FakeEnv {
        cap: 64,
        ..FakeEnv::default()
    };
    let base = Instant::now();
    let mut secs = 0u64;
    let now = |s: u64| Now {
        mono: base + Duration::from_secs(s),
        unix: UNIX + s,
    };
    let mut out = [0u8; 1500];
    let cl = clients();
    let _ = server.handle_client(now(secs), cl[0], &seed, &mut out, &mut env);

    let mut rest = data;
    while rest.len() >= 3 {
        let actor = rest[0];
        let len = (u16::from_be_bytes([rest[1], rest[2]]) as usize).min(rest.len() - 3);
        let pkt = &rest[3..3 + len];
        rest = &rest[3 + len..];
        match actor % 6 {
            0..=2 => {
                let c = cl[(actor % 3) as usize];
                match server.handle_client(now(secs), c, pkt, &mut out, &mut env) {
                    Action::Reply(n) => assert!(n <= out.len()),
                    Action::Forward { relay, data, .. } => {
                        assert!(data.end <= pkt.len());
                        assert!(
                            env.open.contains_key(&relay),
                            "forwarding through a closed socket"
                        );
                    }
                    Action::None => {}
                }
            }
            3 | 4 => {
                // A peer datagram on one of the open relayed sockets.
                // In a fixed order, so that a run is reproducible.
                let mut open: Vec<RelayId> = env.open.keys().copied().collect();
                open.sort_by_key(|r| r.0);
                if let Some(&relay) = open.get(actor as usize / 6 % open.len().max(1)) {
                    let peer = if actor & 0x80 == 0 {
                        SocketAddr::from(([93, 184, 216, 34], 5000))
                    } else {
                        "[2606:4700::1]:443".parse().unwrap()
                    };
                    let mut buf = vec![0u8; HEADROOM + pkt.len() + TAILROOM];
                    buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(pkt);
                    if let Some(d) = server.handle_peer(
                        now(secs),
                        relay,
                        peer,
                        &mut buf,
                        HEADROOM..HEADROOM + pkt.len(),
                    ) {
                        assert!(d.frame.end <= buf.len());
                    }
                }
            }
            _ => {
                let step = pkt.first().copied().unwrap_or(1);
                secs += u64::from(step) * 8;
                if step & 0xc0 == 0xc0 {
                    // A reload: revoke the seeded user, or remove the secret, or restore both.
                    let live = shared.live();
                    let mut credentials = live.credentials.clone();
                    match step % 3 {
                        0 => {
                            credentials.revoked_users.insert("f".into());
                        }
                        1 => credentials.secrets.clear(),
                        _ => {
                            credentials.revoked_users.clear();
                            credentials.secrets = vec![SECRET.to_vec()];
                        }
                    }
                    shared.replace_live(Live {
                        credentials,
                        filter: live.filter.clone(),
                        bandwidth: live.bandwidth.clone(),
                    });
                }
                server.handle_timeout(now(secs), &mut env);
            }
        }
        assert!(server.allocation_count() <= 8);
        assert_eq!(shared.allocations() as usize, server.allocation_count());
    }
    server.clear(now(secs), &mut env);
    assert!(
        env.open.is_empty(),
        "every relayed socket closed with its allocation"
    );
    assert_eq!(shared.allocations(), 0);
});
