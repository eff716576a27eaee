//! Criterion benchmarks of the sans-I/O core's hot path and of Allocate handling.
//!
//! No sockets: these measure the protocol work per datagram (decode, lookups, checks, framing in
//! place), which is what the driver adds to the kernel's cost. Run:
//! `cargo bench -p veil-relay --bench hot_path`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use veil_relay::privacy::Redactor;
use veil_relay::proto::auth::{self, Credentials, Key, NonceKey};
use veil_relay::proto::peer_filter::PeerFilter;
use veil_relay::proto::server::{
    Action, ClientKey, HEADROOM, Now, RelayAddr, Server, ServerConfig, Shared, TAILROOM,
};
use veil_relay::proto::stun::{Class, Integrity, Writer, attr, method};
use veil_relay::proto::testing::FakeEnv;

const SECRET: &[u8] = b"bench-secret-0123456789";
const REALM: &str = "bench";
const PAYLOAD: usize = 160; // a 20 ms Opus frame with RTP and SRTP overhead

struct Bench {
    server: Server,
    env: FakeEnv,
    now: Now,
    client: ClientKey,
    username: String,
    key: Key,
    nonce: Vec<u8>,
}

fn setup() -> Bench {
    let cfg = ServerConfig {
        realm: REALM.into(),
        relays: [
            vec![RelayAddr {
                bind: "127.0.0.1".parse().unwrap(),
                advertise: "127.0.0.1".parse().unwrap(),
            }],
            vec![],
        ],
        user_quota: u32::MAX,
        total_quota: u32::MAX,
        // The challenge is measured answered (one source sends them all), and the bandwidth
        // meters on, as the relay's defaults have them, but too large to ever bind.
        unauthenticated_rate: 0,
        bandwidth: vec![veil_relay::proto::limiter::BandwidthCaps {
            allocation: veil_relay::proto::limiter::Caps {
                bytes_per_second: 1 << 40,
                packets_per_second: 1 << 40,
            },
            user: veil_relay::proto::limiter::Caps {
                bytes_per_second: 1 << 40,
                packets_per_second: 1 << 40,
            },
        }],
        ..ServerConfig::default()
    };
    let creds = Credentials {
        secrets: vec![SECRET.to_vec()],
        static_users: vec![],
        ..Default::default()
    };
    let filter = PeerFilter::new(&[], &[]);
    let nonces = NonceKey::new(b"bench-node");
    let now = Now {
        mono: Instant::now(),
        unix: 1_800_000_000,
    };
    let client = ClientKey {
        listener: 0,
        transport: veil_relay::proto::server::Transport::Udp,
        addr: "192.0.2.1:40000".parse().unwrap(),
    };
    let nonce = nonces
        .mint((now.unix + 3600) as u32, 0, client.addr)
        .to_vec();
    let shared = Shared::new(
        cfg,
        creds,
        nonces,
        filter,
        Redactor::with_secret(b"r", false),
    );
    let (username, password) = auth::mint(SECRET, now.unix + 86_400, Some("bench"));
    let key = Key::derive(
        auth::ALG_MD5,
        username.as_bytes(),
        REALM.as_bytes(),
        password.as_bytes(),
    );
    Bench {
        server: Server::new(Arc::new(shared)),
        env: FakeEnv::default(),
        now,
        client,
        username,
        key,
        nonce,
    }
}

impl Bench {
    fn request(
        &self,
        m: u16,
        txid: [u8; 12],
        attrs: &[(u16, &[u8])],
        peer: Option<SocketAddr>,
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 1500];
        let mut w = Writer::new(&mut buf, m, Class::Request, &txid).unwrap();
        for (t, v) in attrs {
            w.attr(*t, v).unwrap();
        }
        if let Some(p) = peer {
            w.xor_address(attr::XOR_PEER_ADDRESS, p).unwrap();
        }
        w.attr(attr::USERNAME, self.username.as_bytes()).unwrap();
        w.attr(attr::REALM, REALM.as_bytes()).unwrap();
        w.attr(attr::NONCE, &self.nonce).unwrap();
        w.integrity(Integrity::Sha1, self.key.as_bytes()).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    fn run(&mut self, pkt: &[u8]) -> Action {
        let mut out = [0u8; 1500];
        self.server
            .handle_client(self.now, self.client, pkt, &mut out, &mut self.env)
    }

    /// An allocation with a permission and channel 0x4000 for `peer`.
    fn with_channel(peer: SocketAddr) -> Bench {
        let mut b = setup();
        let alloc = b.request(
            method::ALLOCATE,
            [1; 12],
            &[(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])],
            None,
        );
        assert!(matches!(b.run(&alloc), Action::Reply(_)));
        let bind = b.request(
            method::CHANNEL_BIND,
            [2; 12],
            &[(attr::CHANNEL_NUMBER, &[0x40, 0, 0, 0])],
            Some(peer),
        );
        assert!(matches!(b.run(&bind), Action::Reply(_)));
        b
    }
}

fn hot_path(c: &mut Criterion) {
    let peer: SocketAddr = "93.184.216.34:5000".parse().unwrap();
    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Elements(1));

    // Client -> peer: ChannelData in, (relay id, peer, payload range) out.
    let mut b = Bench::with_channel(peer);
    let mut cd = vec![0x40, 0x00, 0, PAYLOAD as u8];
    cd.extend(std::iter::repeat_n(0xAB, PAYLOAD));
    assert!(matches!(b.run(&cd), Action::Forward { .. }));
    g.bench_function("channel_data_client_to_peer", |bench| {
        let mut out = [0u8; 64];
        bench.iter(|| {
            black_box(
                b.server
                    .handle_client(b.now, b.client, black_box(&cd), &mut out, &mut b.env),
            )
        })
    });

    // Peer -> client: payload in place, ChannelData header written in front.
    let relay = *b.env.open.keys().next().expect("one relayed address");
    let mut buf = vec![0u8; HEADROOM + PAYLOAD + TAILROOM];
    g.bench_function("channel_data_peer_to_client", |bench| {
        bench.iter(|| {
            black_box(b.server.handle_peer(
                b.now,
                relay,
                peer,
                black_box(&mut buf),
                HEADROOM..HEADROOM + PAYLOAD,
            ))
        })
    });

    // Client -> peer: Send indication (full STUN decode, FINGERPRINT check).
    let mut send = vec![0u8; 1500];
    let mut w = Writer::new(&mut send, method::SEND, Class::Indication, &[3; 12]).unwrap();
    w.xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
    w.attr(attr::DATA, &[0xAB; PAYLOAD]).unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    send.truncate(n);
    assert!(matches!(b.run(&send), Action::Forward { .. }));
    g.bench_function("send_indication_client_to_peer", |bench| {
        let mut out = [0u8; 64];
        bench.iter(|| {
            black_box(b.server.handle_client(
                b.now,
                b.client,
                black_box(&send),
                &mut out,
                &mut b.env,
            ))
        })
    });

    // Peer -> client without a channel: Data indication framed in place.
    let other: SocketAddr = "93.184.216.34:5001".parse().unwrap();
    g.bench_function("data_indication_peer_to_client", |bench| {
        bench.iter(|| {
            black_box(b.server.handle_peer(
                b.now,
                relay,
                other,
                black_box(&mut buf),
                HEADROOM..HEADROOM + PAYLOAD,
            ))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("allocate");
    // An unauthenticated Allocate: the 401 challenge with a freshly minted stateless nonce.
    let mut b = setup();
    let mut anon = vec![0u8; 64];
    let mut w = Writer::new(&mut anon, method::ALLOCATE, Class::Request, &[4; 12]).unwrap();
    w.u32(attr::REQUESTED_TRANSPORT, 17 << 24).unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    anon.truncate(n);
    g.bench_function("challenge_401", |bench| {
        bench.iter(|| black_box(b.run(black_box(&anon))))
    });

    // A full authenticated Allocate (REST credential check, key derivation, MI verify, response
    // signed) followed by a Refresh with LIFETIME 0 that deletes it, so state stays bounded.
    let alloc = b.request(
        method::ALLOCATE,
        [5; 12],
        &[(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])],
        None,
    );
    let delete = b.request(
        method::REFRESH,
        [6; 12],
        &[(attr::LIFETIME, &[0, 0, 0, 0])],
        None,
    );
    g.bench_function("allocate_then_delete", |bench| {
        bench.iter_batched(
            || (),
            |()| {
                let a = b.run(&alloc);
                let d = b.run(&delete);
                debug_assert!(matches!((&a, &d), (Action::Reply(_), Action::Reply(_))));
                black_box((a, d))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = hot_path
}
criterion_main!(benches);
