//! Issue 25 against the real binary: the signals of abuse the relay exports count patterns,
//! never identities. A credential used from many networks at once (a stolen one) moves
//! `veil_relay_credentials_spread`; a caller at one address or one moving between two networks
//! moves it as far as two and no further; neither the ids nor the addresses appear in
//! `/metrics`.

mod common;

use common::{RawTurn, free_tcp_addr, start_relay};

#[test]
fn a_credential_used_from_many_networks_is_counted_and_never_named() {
    let admin = free_tcp_addr();
    let relay = start_relay("13800-13899", &["--admin", &admin.to_string()]);
    let mut clients = Vec::new();
    // A stolen credential: five networks (/24s) within a minute. Loopback is 127/8, so each
    // 127.N.0.1 is its own /24.
    for n in 1..=5 {
        let mut c = RawTurn::rest(&format!("127.{n}.0.1:0"), relay.addr, "thief42");
        c.allocate();
        clients.push(c);
    }
    // A caller moving from one network to another, and one at home with two allocations.
    for local in ["127.10.0.1:0", "127.11.0.1:0"] {
        let mut c = RawTurn::rest(local, relay.addr, "mover42");
        c.allocate();
        clients.push(c);
    }
    for local in ["127.0.0.1:0", "127.0.0.2:0"] {
        let mut c = RawTurn::rest(local, relay.addr, "home42");
        c.allocate();
        clients.push(c);
    }
    let (status, m) = common::http_get(admin, "/metrics");
    assert_eq!(status, 200);
    let at_least = |n: u32| {
        common::metric(
            &m,
            &format!("veil_relay_credentials_spread{{networks=\"{n}\"}}"),
        )
    };
    assert_eq!(at_least(2), Some(2.0), "thief42 and mover42: {m}");
    assert_eq!(at_least(4), Some(1.0), "thief42 only");
    assert_eq!(at_least(8), Some(0.0));
    assert_eq!(
        common::metric(&m, "veil_relay_credentials_spread_untracked_total"),
        Some(0.0)
    );
    for needle in [
        "thief42",
        "mover42",
        "home42",
        "127.1.0",
        "127.10.0",
        "127.0.0.2",
    ] {
        assert!(!m.contains(needle), "{needle} in /metrics");
    }
    common::promtool_check(&m);
}
