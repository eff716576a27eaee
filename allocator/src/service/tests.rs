//! The service's tests: configuration, DNS pools, placement through the API, metrics.

use super::config::{default_client_allocations, default_listen, default_rate};
use super::*;
use axum::Router;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use veil_proto::auth;

#[test]
fn example_config_parses_and_its_policy_is_valid() {
    let cfg: AllocatorConfig = serde_saphyr::from_str(include_str!("../../allocator.example.yaml"))
        .expect("the example parses");
    assert_eq!(cfg.listen, default_listen());
    assert_eq!(
        (cfg.ttl, cfg.poll_interval_ms, cfg.down_after, cfg.up_after),
        (600, 1000, 3, 2)
    );
    assert_eq!(cfg.audit_retention_hours, 168);
    assert_eq!(cfg.policy.unknown, None, "unset: the default zones");
    assert!(cfg.policy.groups.is_empty());
    let policy = Policy::new(cfg.policy.clone()).expect("the example policy is valid");
    for r in &cfg.relays {
        assert!(policy.zone_of(&r.name).is_some(), "{} is in a zone", r.name);
    }
}

/// A DNS pool (`localhost` resolves to loopback here) is expanded into relays polled by
/// address, in the pool's zone; an in-process relay admin endpoint answers.
#[tokio::test]
async fn dns_pools_become_relays() {
    use veil_proto::auth::{Credentials, NonceKey};
    use veil_relay::admin::{AdminState, router};
    use veil_relay::proto::peer_filter::PeerFilter;
    use veil_relay::proto::server::{ServerConfig, Shared};

    let shared = Arc::new(Shared::new(
        ServerConfig {
            zone: Some("us".into()),
            ..ServerConfig::default()
        },
        Credentials::default(),
        NonceKey::new(b"k"),
        PeerFilter::new(&[], &[]),
        veil_relay::privacy::Redactor::with_secret(b"r", false),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let endpoints = veil_relay::admin::Endpoints {
        udp: vec!["127.0.0.1:3478".parse().unwrap()],
        ..Default::default()
    };
    let state = AdminState::new(shared, &endpoints, None, None, None);
    tokio::spawn(async move { axum::serve(listener, router(state)).await });

    let dir = std::env::temp_dir().join(format!("veil-alloc-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("s"), "secret-0123456789abcdef\n").unwrap();
    let mut cfg: AllocatorConfig =
        serde_saphyr::from_str(include_str!("../../allocator.example.yaml")).unwrap();
    cfg.secret_files = vec![dir.join("s")];
    cfg.policy.zones.insert(
        "us".into(),
        veil_geo::policy::Zone {
            relays: vec!["us-pool".into()],
        },
    );
    cfg.relays = vec![RelayEntry {
        name: "us-pool".into(),
        admin: format!("localhost:{port}"),
        dns: true,
        latitude: None,
        longitude: None,
    }];
    cfg.up_after = 1;
    let app = App::new(cfg).unwrap();
    app.poll_once().await;
    let relays = app.relays.read().unwrap().clone();
    let v4 = relays
        .iter()
        .find(|t| t.view.name == "us-pool/127.0.0.1")
        .expect("discovered by address");
    assert_eq!(v4.view.zone, "us");
    assert!(v4.view.healthy, "its /status answered in the right zone");
    assert_eq!(
        v4.uris,
        vec!["turn:127.0.0.1:3478?transport=udp".to_string()]
    );
    let a = app
        .allocate("127.0.2.1".parse().unwrap(), &IceRequest::default())
        .unwrap();
    assert_eq!(a.zone, "us");
    let m = app.render_metrics();
    assert!(
        m.contains("veil_allocator_placements_total{zone=\"us\"} 1\n"),
        "{m}"
    );
    assert!(!m.contains("127.0.0.1"), "no address in labels: {m}");
    assert!(
        m.contains("veil_allocator_credentials_minted_total 1\n"),
        "{m}"
    );
    assert!(m.contains("\nprocess_resident_memory_bytes "), "{m}");

    // Secret rotation: a changed file signs the next credential; an emptied one is ignored.
    let verify = |a: &IceAnswer, secret: &[u8]| {
        let s = &a.ice_servers[0];
        auth::mint_username(secret, s.username.clone()).1 == s.credential
    };
    assert!(verify(&a, b"secret-0123456789abcdef"));
    // A native client's signed first request: the relay's realm and the nonce issued with the
    // credential, which the relay takes (issue 23 §3).
    let native = a
        .native_auth
        .as_ref()
        .expect("the relay's /status gives its realm");
    assert_eq!(native.realm, ServerConfig::default().realm);
    let holder = Credentials {
        secrets: vec![b"secret-0123456789abcdef".to_vec()],
        ..Default::default()
    };
    let user = &a.ice_servers[0].username;
    assert!(holder.issued_nonce(user, native.nonce.as_bytes()));
    assert!(!holder.issued_nonce(&format!("{user}x"), native.nonce.as_bytes()));
    std::fs::write(
        dir.join("s"),
        "rotated-0123456789abcdef\nsecret-0123456789abcdef\n",
    )
    .unwrap();
    app.poll_once().await;
    let b = app
        .allocate("127.0.2.1".parse().unwrap(), &IceRequest::default())
        .unwrap();
    assert!(
        verify(&b, b"rotated-0123456789abcdef"),
        "signed with the new first secret"
    );
    std::fs::write(dir.join("s"), "# emptied by mistake\n").unwrap();
    app.poll_once().await;
    let c = app
        .allocate("127.0.2.1".parse().unwrap(), &IceRequest::default())
        .unwrap();
    assert!(
        verify(&c, b"rotated-0123456789abcdef"),
        "the last good secret stays"
    );
    let m = app.render_metrics();
    assert!(m.contains("veil_allocator_secret_reloads_total 1\n"), "{m}");
    assert!(
        m.contains("veil_allocator_credentials_minted_total 3\n"),
        "{m}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An app on the demo DB (127.0.1.x DE, 127.0.2.x US, 127.0.3.x JP) with relays marked up
/// by hand, no polling.
fn app_with(policy: &str, relays: &[(&str, &str)]) -> Result<Arc<App>, ConfigError> {
    let dir =
        std::env::temp_dir().join(format!("veil-alloc-{}-{}", std::process::id(), random_id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("s"), "secret-0123456789abcdef\n").unwrap();
    let mut cfg: AllocatorConfig =
        serde_saphyr::from_str(include_str!("../../allocator.example.yaml")).unwrap();
    cfg.secret_files = vec![dir.join("s")];
    cfg.policy = serde_saphyr::from_str(policy).unwrap();
    cfg.relays = relays
        .iter()
        .map(|(name, _)| RelayEntry {
            name: name.to_string(),
            admin: "127.0.0.1:9".into(),
            dns: false,
            latitude: None,
            longitude: None,
        })
        .collect();
    let app = App::new(cfg)?;
    std::fs::remove_dir_all(&dir).unwrap();
    for (i, t) in app.relays.write().unwrap().iter_mut().enumerate() {
        t.view.healthy = true;
        t.view.capacity = 100;
        t.uris = vec![format!("turn:127.0.0.1:{}?transport=udp", 3478 + i)];
        assert_eq!(t.view.zone, relays[i].1);
    }
    Ok(app)
}

const CALL_POLICY: &str = "zones:\n  eu: {relays: [eu-1, eu-2]}\n  us: {relays: [us-1]}\n  \
    apac: {relays: [apac-1]}\nrules:\n  - {match: {group: EU}, zones: [eu]}\n  \
    - {match: {country: US}, zones: [us, eu]}\n  - {match: {country: JP}, zones: [apac]}\n\
    default: [us]\nunknown: refuse\n";
const CALL_RELAYS: &[(&str, &str)] = &[
    ("eu-1", "eu"),
    ("eu-2", "eu"),
    ("us-1", "us"),
    ("apac-1", "apac"),
];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A profile the relays admit only over TLS gets their `turns:` URIs only and the claim
/// `s=<profile>`; it is placed only on relays that offer TLS (in another of the caller's
/// zones if need be); without one the request is refused, never answered with a leg the
/// profile cannot protect.
#[test]
fn tls_only_profiles_get_turns_uris_only() {
    let app = app_with(CALL_POLICY, CALL_RELAYS).unwrap();
    for t in app.relays.write().unwrap().iter_mut() {
        t.uris.push("turn:127.0.0.1:3478?transport=tcp".into());
        if t.view.name == "us-1" {
            t.uris.push("turns:relay.example:443?transport=tcp".into());
        }
        t.tls_only = vec!["private".into()];
    }
    // A US caller [us, eu], whom distance places in the EU: the EU relays have no TLS, so
    // the private profile goes to us-1.
    let req = |profile: Option<&str>| IceRequest {
        profile: profile.map(str::to_string),
        ..IceRequest::default()
    };
    let us = ip("127.0.2.7");
    let a = app.allocate(us, &req(Some("private"))).unwrap();
    let s = &a.ice_servers[0];
    assert!(!s.urls.is_empty());
    assert!(
        s.urls.iter().all(|u| u.starts_with("turns:")),
        "{:?}",
        s.urls
    );
    assert!(s.username.ends_with(";s=private"), "{}", s.username);
    assert_eq!(a.zone, "us");
    // Another profile is placed as before, with every URI.
    let plain = app.allocate(us, &req(Some("voice"))).unwrap();
    assert_eq!(plain.zone, "eu");
    let urls = &plain.ice_servers[0].urls;
    assert!(urls.iter().all(|u| u.starts_with("turn:")), "{urls:?}");
    // Japanese [apac] and German [eu] callers: no relay they may use offers TLS.
    let jp = ip("127.0.3.7");
    for caller in [jp, ip("127.0.1.7")] {
        let e = app.allocate(caller, &req(Some("private"))).unwrap_err();
        assert_eq!((e.0, e.1), (StatusCode::SERVICE_UNAVAILABLE, "no_tls"));
        assert!(app.allocate(caller, &req(None)).is_ok());
    }
    // A call with one private party: both are placed where TLS is.
    let call = CallRequest {
        parties: vec![
            crate::request::Party::default(),
            crate::request::Party {
                profile: Some("private".into()),
                ..crate::request::Party::default()
            },
        ],
        ..CallRequest::default()
    };
    let c = app.place_call([us, us], &call).unwrap();
    assert_eq!(c.zones, ["us", "us"]);
    let p = &c.parties[1].ice_servers[0].urls;
    assert!(p.iter().all(|u| u.starts_with("turns:")), "{p:?}");
    // A Japanese caller and a private American one: each in its own zone.
    let c = app.place_call([jp, us], &call).unwrap();
    assert_eq!(c.zones, ["apac", "us"]);
    let e = app.place_call([us, jp], &call).unwrap_err();
    assert_eq!(e.1, "no_tls");
    // Only a backend key chooses a profile.
    assert!(crate::request::ice(b"{\"profile\":\"private\"}", false).is_err());
    assert!(crate::request::ice(b"{\"profile\":\"a b\"}", true).is_err());
}

#[test]
fn calls_joins_and_the_cross_border_record() {
    let app = app_with(CALL_POLICY, CALL_RELAYS).unwrap();
    let req = CallRequest {
        parties: vec![
            crate::request::Party::default(),
            crate::request::Party::default(),
        ],
        ..CallRequest::default()
    };
    // DE [eu] and US [us, eu]: one EU relay for both.
    let c = app
        .place_call([ip("127.0.1.5"), ip("127.0.2.5")], &req)
        .unwrap();
    assert!(!c.cross_zone);
    assert_eq!(c.zones, ["eu", "eu"]);
    assert_eq!(
        c.parties[0].ice_servers[0].urls[0], c.parties[1].ice_servers[0].urls[0],
        "the same relay"
    );
    // DE [eu] and JP [apac]: each in its own zone, recorded once.
    let c = app
        .place_call([ip("127.0.1.5"), ip("127.0.3.5")], &req)
        .unwrap();
    assert!(c.cross_zone);
    assert_eq!(c.zones, ["eu", "apac"]);
    let report = app.audit.lock().unwrap().report(0, u64::MAX);
    assert_eq!(report.cross_zone_calls.len(), 1);
    assert_eq!(
        (
            report.cross_zone_calls[0].zone_a.as_str(),
            report.cross_zone_calls[0].zone_b.as_str(),
            report.cross_zone_calls[0].count
        ),
        ("apac", "eu", 1)
    );

    // Join tokens: the US party joins the German one's relay; the Japanese one cannot.
    let first = app
        .allocate(ip("127.0.1.9"), &IceRequest::default())
        .unwrap();
    let join = |who: &str| {
        app.allocate(
            ip(who),
            &IceRequest {
                join: Some(first.join_token.clone()),
                ..IceRequest::default()
            },
        )
    };
    let us = join("127.0.2.9").unwrap();
    assert_eq!(us.cross_zone, Some(false));
    assert_eq!(us.ice_servers[0].urls[0], first.ice_servers[0].urls[0]);
    assert!(us.ice_servers[0].username.ends_with(";z=eu"));
    let jp = join("127.0.3.9").unwrap();
    assert_eq!((jp.zone.as_str(), jp.cross_zone), ("apac", Some(true)));
    let mut forged = first.join_token.clone();
    forged.push('A');
    let e = app
        .allocate(
            ip("127.0.2.9"),
            &IceRequest {
                join: Some(forged),
                ..IceRequest::default()
            },
        )
        .unwrap_err();
    assert_eq!((e.0, e.1), (StatusCode::BAD_REQUEST, "bad_join_token"));

    // A client the DB cannot place: 451, counted, not placed anywhere.
    let e = app
        .allocate(ip("203.0.113.7"), &IceRequest::default())
        .unwrap_err();
    assert_eq!(
        (e.0, e.1),
        (
            StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS,
            "location_unknown"
        )
    );

    let report = app.audit.lock().unwrap().report(0, u64::MAX);
    let placed = |c: &str, z: &str| {
        report
            .placements
            .iter()
            .filter(|r| r.country == c && r.zone == z)
            .map(|r| r.count)
            .sum::<u64>()
    };
    assert_eq!(placed("DE", "eu"), 3);
    assert_eq!(placed("US", "eu"), 2);
    assert_eq!(placed("JP", "apac"), 2);
    assert_eq!(placed("unknown", "eu") + placed("unknown", "us"), 0);
    assert_eq!(
        report.cross_zone_calls[0].count, 2,
        "the join across zones too"
    );
    let m = app.render_metrics();
    for want in [
        "veil_allocator_cross_zone_calls_total{zone_a=\"apac\",zone_b=\"eu\"} 2\n",
        "veil_allocator_placements_by_country_total{country=\"DE\",zone=\"eu\"} 3\n",
        "veil_allocator_calls_total{placement=\"same_zone\"} 2\n",
        "veil_allocator_calls_total{placement=\"cross_zone\"} 2\n",
        "veil_allocator_unplaceable_total 1\n",
    ] {
        assert!(m.contains(want), "{want}in\n{m}");
    }
    let csv = report.to_csv();
    assert!(csv.contains(",placement,DE,eu,,3\n"), "{csv}");
    assert!(
        !csv.contains("127.") && !m.contains("127.0.1"),
        "no address"
    );
}

#[test]
fn draining_relays_get_nothing_and_a_dead_zone_never_spills() {
    let app = app_with(CALL_POLICY, CALL_RELAYS).unwrap();
    app.relays.write().unwrap()[0].view.draining = true;
    for _ in 0..20 {
        let a = app
            .allocate(ip("127.0.1.5"), &IceRequest::default())
            .unwrap();
        assert_eq!(
            a.ice_servers[0].urls[0],
            "turn:127.0.0.1:3479?transport=udp"
        );
    }
    app.relays.write().unwrap()[1].view.healthy = false;
    let e = app
        .allocate(ip("127.0.1.5"), &IceRequest::default())
        .unwrap_err();
    assert_eq!((e.0, e.1), (StatusCode::SERVICE_UNAVAILABLE, "no_relay"));
}

#[test]
fn a_policy_the_db_cannot_serve_is_refused_at_start() {
    let e = app_with(
        "zones: {ca: {relays: [us-1]}}\nrules: [{match: {subdivision: US-CA}, zones: [ca]}]\ndefault: [ca]\n",
        &[("us-1", "ca")],
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("policy") && e.contains("rules[0] (subdivision US-CA) can never match"),
        "{e}"
    );
}

/// Every configuration App::new accepts answers requests; each bad field is refused at
/// load, named. `ttl: 30` used to pass and then panic on every request (a clamp whose
/// minimum was above its maximum).
#[test]
fn accepted_configs_answer_and_bad_fields_are_refused_at_load() {
    let dir =
        std::env::temp_dir().join(format!("veil-alloc-{}-{}", std::process::id(), random_id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("s"), "secret-0123456789abcdef\n").unwrap();
    let base = || {
        let mut cfg: AllocatorConfig =
            serde_saphyr::from_str(include_str!("../../allocator.example.yaml")).unwrap();
        cfg.secret_files = vec![dir.join("s")];
        cfg
    };
    let refused = |f: &dyn Fn(&mut AllocatorConfig), field: &str| {
        let mut cfg = base();
        f(&mut cfg);
        let e = App::new(cfg)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(&format!("`{field}`")), "{field}: {e:?}");
    };
    refused(&|c| c.ttl = 30, "ttl");
    refused(&|c| c.ttl = 0, "ttl");
    refused(&|c| c.ttl = 86_401, "ttl");
    refused(&|c| c.down_after = 0, "down_after");
    refused(&|c| c.up_after = 0, "up_after");
    refused(&|c| c.poll_interval_ms = 0, "poll_interval_ms");
    refused(&|c| c.distance.ms_per_km = f64::NAN, "distance");
    refused(&|c| c.distance.unknown_ms = -1.0, "distance");
    refused(&|c| c.relays[0].latitude = Some(91.0), "relays");
    refused(
        &|c| {
            c.relays[0].latitude = Some(50.0);
            c.relays[0].longitude = None;
        },
        "relays",
    );
    // The edges are accepted and every request is answered, whatever ttl it asks for.
    for ttl in [MIN_TTL, 86_400] {
        let mut cfg = base();
        cfg.ttl = ttl;
        let app = App::new(cfg).expect("accepted");
        for (i, t) in app.relays.write().unwrap().iter_mut().enumerate() {
            t.view.healthy = true;
            t.view.capacity = 100;
            t.uris = vec![format!("turn:127.0.0.1:{}?transport=udp", 3478 + i)];
        }
        for asked in [None, Some(1), Some(MIN_TTL), Some(ttl), Some(u64::MAX)] {
            let req = IceRequest {
                ttl: asked,
                ..IceRequest::default()
            };
            let a = app
                .allocate_inner("127.0.1.5".parse().unwrap(), &req, None)
                .unwrap_or_else(|e| panic!("ttl {ttl}, asked {asked:?}: {}", e.2));
            let granted = a.expires_at - unix_now();
            assert!(
                granted <= ttl && granted + 2 >= MIN_TTL.min(ttl),
                "{granted}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With `metrics_listen`, /metrics is served there without a key and not on the API.
#[tokio::test]
async fn metrics_listen_serves_metrics_apart_from_the_api() {
    async fn get(router: Router, path: &str) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(
                l,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        server.abort();
        out
    }
    let app = app_with(CALL_POLICY, CALL_RELAYS).unwrap();
    // No metrics_listen: the API serves /metrics, to backend keys only.
    assert!(
        get(router(app.clone()), "/metrics")
            .await
            .starts_with("HTTP/1.1 401")
    );
    let mut cfg = app.cfg.clone();
    cfg.metrics_listen = Some("127.0.0.1:9".parse().unwrap());
    let dir = std::env::temp_dir().join(format!("veil-alloc-m-{}", random_id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("s"), "secret-0123456789abcdef\n").unwrap();
    cfg.secret_files = vec![dir.join("s")];
    let app = App::new(cfg).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        get(router(app.clone()), "/metrics")
            .await
            .starts_with("HTTP/1.1 404")
    );
    let m = get(metrics_router(app), "/metrics").await;
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(
        m.contains("veil_allocator_rate_limited_total{limit=\"key\"} 0"),
        "{m}"
    );
}

/// A browser (non-backend) key with the defaults.
fn browser_key(key: &str) -> ApiKey {
    ApiKey {
        key: key.into(),
        backend: false,
        requests_per_second: default_rate(),
        client_requests_per_second: None,
        client_allocations: default_client_allocations(),
    }
}

#[test]
fn config_errors_name_the_field() {
    let mut cfg: AllocatorConfig =
        serde_saphyr::from_str(include_str!("../../allocator.example.yaml")).unwrap();
    cfg.secret_files = vec![];
    cfg.api_keys = vec![browser_key("short")];
    assert!(
        App::new(cfg.clone())
            .err()
            .unwrap()
            .to_string()
            .contains("api_keys")
    );
    cfg.api_keys = vec![browser_key("long-enough-key-0123")];
    assert!(
        App::new(cfg.clone())
            .err()
            .unwrap()
            .to_string()
            .contains("secret_files")
    );
    let e = serde_saphyr::from_str::<AllocatorConfig>("listen: 127.0.0.1:1\nbogus: 1\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("bogus"), "{e}");
}
