//! The configuration's tests: the example file, every setting by path, errors that name the
//! field, resolution and reload.

use super::*;
use crate::shaping::{Padding, Timing};

#[test]
fn debug_output_never_shows_secrets_or_passwords() {
    let mut c = RelayConfig::default();
    c.auth.secrets = vec!["inline-secret-0123456789".into()];
    c.auth.static_users = vec![StaticUser {
        username: "dev".into(),
        password: "dev-password-42".into(),
    }];
    let r = c.resolve().unwrap();
    let text = format!("{c:?} {r:?}");
    assert!(!text.contains("inline-secret-0123456789"), "{text}");
    assert!(!text.contains("dev-password-42"), "{text}");
    assert!(text.contains("dev"), "the user name is shown");
}

#[test]
fn every_setting_can_be_set_by_its_path() {
    let mut c = RelayConfig::default();
    c.set("streams.idle_timeout=30").unwrap();
    c.set("port_range=40000-40999").unwrap();
    c.set("peers.allow=[10.0.0.0/8, 192.168.0.0/16]").unwrap();
    c.set("zone=eu").unwrap();
    c.set("peers.deny=10.0.0.0/8").unwrap();
    assert_eq!(c.peers.deny.len(), 1);
    c.set("shaping.cover=50:256").unwrap();
    c.set("admin=127.0.0.1:9000").unwrap();
    assert_eq!(c.streams.idle_timeout, 30);
    assert_eq!(
        c.port_range,
        PortRange {
            start: 40000,
            end: 40999
        }
    );
    assert_eq!(c.peers.allow.len(), 2);
    assert_eq!(c.zone.as_deref(), Some("eu"));
    assert!(c.shaping.cover.is_some());
    assert!(c.admin.is_some());
    c.set("zone=").unwrap();
    assert_eq!(c.zone, None, "an empty value clears an optional setting");
    for (bad, says) in [
        ("streams.idle_timeout", "PATH=VALUE"),
        (
            "streams.idel_timeout=3",
            "--set streams.idel_timeout: no setting",
        ),
        ("streams.idle_timeout=soon", "idle_timeout"),
        ("port_range=1-", "port range"),
    ] {
        let e = c.clone().set(bad).unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
    assert_eq!(
        c.streams.idle_timeout, 30,
        "a refused assignment changes nothing"
    );
}

#[test]
fn restart_needed_names_fixed_settings_only() {
    let base = RelayConfig {
        auth: AuthConfig {
            secrets: vec!["a-secret-of-sixteen-bytes".into()],
            ..AuthConfig::default()
        },
        ..RelayConfig::default()
    };
    let a = base.resolve().unwrap();
    // What a reload applies: secrets, peers, shaping policies.
    let mut live = base.clone();
    live.auth.secrets.push("another-secret-0123456789".into());
    live.peers.deny.push("192.0.2.0/24".parse().unwrap());
    live.shaping.enabled = true;
    assert!(a.restart_needed(&live.resolve().unwrap()).is_empty());
    // What needs a restart.
    let mut fixed = base.clone();
    fixed.realm = "elsewhere".into();
    fixed.quotas.total = 5;
    fixed.port_range = PortRange {
        start: 40000,
        end: 40999,
    };
    fixed
        .shaping
        .profiles
        .insert("voice".into(), Default::default());
    let b = fixed.resolve().unwrap();
    assert_eq!(
        a.restart_needed(&b),
        ["port_range", "quotas.total", "realm", "shaping.profiles"]
    );
    assert!(a.profiles_renamed(&b));
    // A profile's policy reloads; a changed certificate path does not (the running node
    // rereads the files it started with).
    let mut with_profile = base.clone();
    with_profile
        .shaping
        .profiles
        .insert("voice".into(), Default::default());
    let p = with_profile.resolve().unwrap();
    let mut retuned = with_profile.clone();
    retuned.shaping.profiles.get_mut("voice").unwrap().padding = Padding::Multiple(64);
    assert!(p.restart_needed(&retuned.resolve().unwrap()).is_empty());
    let mut moved = base.clone();
    moved.tls.cert = Some("/elsewhere/cert.pem".into());
    moved.streams.idle_timeout = 5;
    assert_eq!(
        a.restart_needed(&moved.resolve().unwrap()),
        ["streams.idle_timeout", "tls.cert"]
    );
}

#[test]
fn example_file_is_exactly_the_defaults() {
    let parsed = RelayConfig::from_yaml(EXAMPLE, "relay.example.yaml").expect("the example parses");
    assert_eq!(parsed, RelayConfig::default());
}

#[test]
fn example_with_a_secret_resolves() {
    let mut c = RelayConfig::from_yaml(EXAMPLE, "example").unwrap();
    c.auth.secrets = vec!["0123456789abcdef0123".into()];
    let r = c.resolve().unwrap();
    assert_eq!(
        r.server.relays[0][0].bind,
        "127.0.0.1".parse::<IpAddr>().unwrap()
    );
    assert_eq!(r.server.default_lifetime, 600);
    assert_eq!(r.server.max_lifetime, 3600);
    assert!(r.server.software.is_none());
    assert!(r.workers >= 1);
}

fn err_of(yaml: &str) -> String {
    match RelayConfig::from_yaml(yaml, "test.yaml").and_then(|c| c.resolve().map(|_| ())) {
        Err(e) => e.to_string(),
        Ok(()) => panic!("{yaml} should be rejected"),
    }
}

#[test]
fn bad_fields_are_named() {
    let cases = [
        (
            "listen: [127.0.0.1:3478]\nrealmm: x\n",
            "did you mean `realm`?), expected one of",
        ),
        (
            "port_range: 60000-50000\nauth: {secrets: [s]}\n",
            "port_range",
        ),
        (
            "port_range: nope\n",
            "is not a port range like 49152-65535 at line 1",
        ),
        (
            "lifetimes: {default_allocation: 7200}\nauth: {secrets: [s]}\n",
            "lifetimes",
        ),
        ("quotas: {per_user: 0}\nauth: {secrets: [s]}\n", "quotas"),
        (
            "peers: {allow: [10.0.0.0/99]}\n",
            "is not an address or address/prefix (e.g. 10.0.0.0/8, fc00::/7) at line 1, column 17",
        ),
        (
            "listen: [0.0.0.0:3478]\nauth: {secrets: [s]}\n",
            "relay_ips",
        ),
        (
            "relay_ips: [127.0.0.1, 127.0.0.1]\nauth: {secrets: [s]}\n",
            "relay_ips",
        ),
        (
            "relay_ips: [127.0.0.1, 127.0.0.2]\nexternal_ips: [203.0.113.1]\nauth: {secrets: [s]}\n",
            "external_ips",
        ),
        ("listen: [127.0.0.1:3478]\n", "auth"),
        (
            "auth: {secret_files: [/nonexistent/veil-secrets]}\n",
            "/nonexistent/veil-secrets",
        ),
        ("lifetimes: {permision: 5}\n", "did you mean `permission`"),
        ("workers: many\n", "at line 1, column 10"),
        ("shaping: {padding: \"130,260\"}\n", "multiple of 4"),
        ("shaping: {timing: slots:0ms}\n", "at line 1, column 19"),
        (
            "shaping: {enabled: true, queue_limit: 0}\nauth: {secrets: [s]}\n",
            "shaping.queue_limit",
        ),
        (
            "tls: {site: {upstream: '127.0.0.1:8443'}}\nauth: {secrets: [s]}\n",
            "tls.site`: needs listen_tls",
        ),
        (
            "tls: {site: {upstream: '127.0.0.1:8443', alpn: ['']}}\nauth: {secrets: [s]}\n",
            "tls.site.alpn",
        ),
        (
            "tls: {site: {upstream: x, proxy_protocol: v3}}\n",
            "expected one of none, v2",
        ),
        (
            "tls: {site: {upstream: x, mode: loose}}\n",
            "expected one of compat, strict",
        ),
        (
            "tls: {site: {upstream: '127.0.0.1:8443', tls13_tickets: 9}}\nauth: {secrets: [s]}\n",
            "tls.site.tls13_tickets",
        ),
        (
            "fast_path: {mode: xdp}\nauth: {secrets: [s]}\n",
            "fast_path.interfaces",
        ),
        (
            "fast_path: {mode: auto, interfaces: ['a very long interface name']}\nauth: {secrets: [s]}\n",
            "fast_path.interfaces",
        ),
        (
            "fast_path: {mode: ebpf}\n",
            "expected one of off, xdp, auto",
        ),
        (
            "batch_wait_us: 5000\nauth: {secrets: [s]}\n",
            "batch_wait_us",
        ),
    ];
    for (yaml, needle) in cases {
        let e = err_of(yaml);
        assert!(
            e.contains(needle),
            "error for {yaml:?} should name {needle}: {e}"
        );
    }
}

#[test]
fn secret_files_hold_several_secrets() {
    let dir = std::env::temp_dir().join(format!("veil-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("secrets");
    std::fs::write(
        &f,
        "# rotation: newest first\nnew-secret-0123456789\n\nold-secret-0123456789\n",
    )
    .unwrap();
    let c = RelayConfig {
        auth: AuthConfig {
            secret_files: vec![f.clone()],
            ..Default::default()
        },
        ..Default::default()
    };
    let r = c.resolve().unwrap();
    assert_eq!(
        r.credentials.secrets,
        vec![
            b"new-secret-0123456789".to_vec(),
            b"old-secret-0123456789".to_vec()
        ]
    );
    std::fs::write(&f, "# nothing\n").unwrap();
    assert!(
        c.resolve()
            .unwrap_err()
            .to_string()
            .contains("holds no secret")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn several_relay_ips_pair_with_external_ips_in_order_per_family() {
    let c = RelayConfig::from_yaml(
        "relay_ips: [10.0.0.1, '::1', 10.0.0.2]\n\
         external_ips: [203.0.113.1, 203.0.113.2]\n\
         auth: {secrets: [0123456789abcdef]}\n",
        "test",
    )
    .unwrap();
    let r = c.resolve().unwrap();
    let pairs = |f: usize| -> Vec<(String, String)> {
        r.server.relays[f]
            .iter()
            .map(|a| (a.bind.to_string(), a.advertise.to_string()))
            .collect()
    };
    assert_eq!(
        pairs(0),
        [("10.0.0.1", "203.0.113.1"), ("10.0.0.2", "203.0.113.2")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(pairs(1), [("::1".to_string(), "::1".to_string())]);
    // Every relay IP and advertised IP is the node's own: its listener is denied on each.
    for ip in ["10.0.0.2", "203.0.113.2"] {
        assert!(
            r.filter
                .check(format!("{ip}:3478").parse().unwrap())
                .is_err()
        );
    }
}

#[test]
fn external_ip_is_advertised_and_denied_as_a_peer() {
    let c = RelayConfig {
        listen: vec!["127.0.0.1:3478".parse().unwrap()],
        external_ips: vec!["93.184.216.1".parse().unwrap()],
        port_range: PortRange {
            start: 20000,
            end: 20999,
        },
        auth: AuthConfig {
            secrets: vec!["0123456789abcdef".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    let r = c.resolve().unwrap();
    let v4 = r.server.relays[0][0];
    assert_eq!(v4.advertise, "93.184.216.1".parse::<IpAddr>().unwrap());
    // The listener through the external IP is ours: denied.
    assert!(
        r.filter
            .check("93.184.216.1:3478".parse().unwrap())
            .is_err()
    );
    // Another allocation's relayed address on this node: reachable (relay_to_relay)...
    assert!(
        r.filter
            .check("93.184.216.1:20500".parse().unwrap())
            .is_ok()
    );
    // ...unless the operator turns it off.
    let mut c = c.clone();
    c.peers.relay_to_relay = false;
    let r = c.resolve().unwrap();
    assert!(
        r.filter
            .check("93.184.216.1:20500".parse().unwrap())
            .is_err()
    );
    // Outside the relayed range the external IP is the host's other services: never.
    for p in ["93.184.216.1:21000", "93.184.216.1:22", "127.0.0.1:9100"] {
        assert!(r.filter.check(p.parse().unwrap()).is_err(), "{p}");
    }
    let mut c = c.clone();
    c.peers.host_peers = true;
    let r = c.resolve().unwrap();
    assert!(
        r.filter
            .check("93.184.216.1:21000".parse().unwrap())
            .is_ok()
    );
    assert!(
        r.filter
            .check("93.184.216.1:3478".parse().unwrap())
            .is_err()
    );
}

/// A listener on an unspecified address answers on every interface address, so each is
/// the node's own: the loopback address is, outside the relayed range, whatever `allow`
/// says; an address no interface holds is not.
#[test]
fn unspecified_listeners_make_every_interface_address_own() {
    let ifaces = crate::sys::interface_addresses();
    assert!(
        ifaces.contains(&"127.0.0.1".parse().unwrap()),
        "getifaddrs lists loopback: {ifaces:?}"
    );
    let c = RelayConfig {
        listen: vec!["0.0.0.0:3478".parse().unwrap()],
        relay_ips: vec!["127.0.0.1".parse().unwrap()],
        admin: Some("127.0.0.1:9000".parse().unwrap()),
        external_ips: vec!["93.184.216.1".parse().unwrap()],
        peers: Peers {
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            ..Default::default()
        },
        auth: AuthConfig {
            secrets: vec!["0123456789abcdef".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    let r = c.resolve().unwrap();
    let f = &r.filter;
    assert!(f.check("127.0.0.1:5000".parse().unwrap()).is_err());
    assert!(!f.admits("127.0.0.1:5000".parse().unwrap()));
    assert!(
        f.admits("127.0.0.2:9000".parse().unwrap()),
        "no interface holds 127.0.0.2"
    );
    assert!(
        f.check("127.0.0.1:9000".parse().unwrap()).is_err(),
        "the admin port"
    );
    assert!(
        f.check("127.0.0.77:3478".parse().unwrap()).is_err(),
        "an unspecified listener's port"
    );
    assert!(f.check("127.0.0.77:5000".parse().unwrap()).is_ok());
    // Every address the host's interfaces hold (::1 too, which no relay IP names).
    for ip in &ifaces {
        assert_eq!(
            f.check(SocketAddr::new(*ip, 5000)),
            Err(crate::proto::peer_filter::Denied::OwnAddress),
            "{ip}"
        );
    }
}

#[test]
fn shaping_profiles_resolve_in_name_order_after_the_node_policy() {
    let yaml = "auth: {secrets: [0123456789abcdef]}\nshaping:\n  profiles:\n    voice: {padding: \"128,256\", timing: slots:20ms, cover: \"50:128\"}\n    bulk: {padding: multiple:64}\n";
    let r = RelayConfig::from_yaml(yaml, "t")
        .unwrap()
        .resolve()
        .unwrap();
    assert!(
        r.shaping[0].is_off(),
        "not enabled: the node default is off"
    );
    assert_eq!(
        r.server.shaping_profiles,
        vec!["bulk".to_string(), "voice".to_string()]
    );
    assert_eq!(r.shaping[1].padding, Padding::Multiple(64));
    assert_eq!(
        r.shaping[2].timing,
        Timing::Slots(std::time::Duration::from_millis(20))
    );
    assert!(r.shaping[2].cover.is_some());
    let bad = "auth: {secrets: [s]}\nshaping: {profiles: {\"a b\": {}}}\n";
    assert!(
        RelayConfig::from_yaml(bad, "t")
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("shaping.profiles")
    );
}

#[test]
fn port_range_overlap() {
    let a = PortRange {
        start: 32768,
        end: 60999,
    };
    assert!(a.overlaps(&PortRange {
        start: 49152,
        end: 65535
    }));
    assert!(!a.overlaps(&PortRange {
        start: 20000,
        end: 29999
    }));
    assert_eq!(PortRange { start: 10, end: 19 }.len(), 10);
}
