//! Issue 21's hostile inputs to the core: credentials whose expiry overflows the clock, fresh
//! credentials from one source, quota claims, attributes beyond their RFC bounds.

use super::*;

/// "Never expires" written as a huge timestamp: the session bound (expiry + max_session) and the
/// lifetime saturate instead of overflowing the clock (a panic in debug builds, which killed the
/// worker; a wrap to LIFETIME 0 in release builds).
#[test]
fn a_huge_credential_expiry_saturates_the_session_bound() {
    let creds = Credentials {
        secrets: vec![SECRET.to_vec()],
        max_session: Some(14_400),
        removed_secret_grace: Some(u32::MAX),
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
    for (port, expiry) in [
        (40000, "9999999999999999999"),
        (40001, "18446744073709551615"),
    ] {
        let mut c = Client::new(port, format!("{expiry}:m"), SECRET);
        let r = c.allocate(&mut s, &mut env, &clock, &[]);
        assert_eq!(class(&r), Class::Success, "{:?}", code(&r));
        assert_eq!(lifetime_of(&r), 600);
    }
    // A reload that removes the secret with the longest grace also saturates.
    s.shared.replace_live(Live {
        credentials: Credentials {
            removed_secret_grace: Some(u32::MAX),
            max_session: Some(u32::MAX),
            ..Default::default()
        },
        filter: PeerFilter::new(&[], &[]),
        bandwidth: Vec::new(),
    });
    s.handle_timeout(clock.now(), &mut env);
    assert_eq!(s.allocation_count(), 2);
}

/// Allocates for every client but the last, which gets 486, counted as `why`.
fn all_but_the_last_allocate(
    cs: &mut [Client],
    s: &mut Server,
    env: &mut FakeEnv,
    clock: &Clock,
    why: Refusal,
) {
    let (last, first) = cs.split_last_mut().expect("clients");
    for c in first {
        allocate_ok(c, s, env, clock);
    }
    assert_eq!(code(&last.allocate(s, env, clock, &[])), Some(486));
    assert_eq!(s.stats().allocations_refused[why as usize], 1);
}

/// Issue 21 §2: fresh credentials (fresh user ids) from one address add nothing past the source
/// prefix's cap; another address is served; a freed allocation frees its unit.
#[test]
fn a_source_prefix_holds_at_most_its_quota_whatever_the_credentials() {
    let mut s = server_with(ServerConfig {
        source_quota: 3,
        user_quota: 10,
        total_quota: 100,
        ..config()
    });
    let (mut env, clock) = (FakeEnv::default(), Clock::new());
    let mut same: Vec<Client> = (0..4)
        .map(|i| Client::rest(40000 + i, &format!("u{i}")))
        .collect();
    all_but_the_last_allocate(&mut same, &mut s, &mut env, &clock, Refusal::SourceQuota);
    // The same prefix in its IPv4-mapped IPv6 form is the same source.
    let mut mapped = Client::rest(40010, "mapped");
    mapped.key.addr = sa("[::ffff:192.0.2.10]:40010");
    assert_eq!(
        code(&mapped.allocate(&mut s, &mut env, &clock, &[])),
        Some(486)
    );
    let mut other = Client::rest(40000, "other");
    other.key.addr = sa("192.0.2.11:40000");
    allocate_ok(&mut other, &mut s, &mut env, &clock);
    // Refresh 0 ends one: its unit is free again.
    let r = same[0].request(
        &mut s,
        &mut env,
        &clock,
        method::REFRESH,
        &[(attr::LIFETIME, 0u32.to_be_bytes().to_vec())],
    );
    assert_eq!(class(&r), Class::Success);
    allocate_ok(&mut same[3], &mut s, &mut env, &clock);
}

/// A credential's quota claim (`q=`, set by the allocator for ids that stand for a network)
/// replaces the per-user quota for its id, up to the node's total.
#[test]
fn a_quota_claim_sets_its_ids_quota() {
    let mut s = server_with(ServerConfig {
        user_quota: 1,
        total_quota: 100,
        ..config()
    });
    let (mut env, clock) = (FakeEnv::default(), Clock::new());
    let user = format!("{}:net-ab12;q=4", T0 + 3600);
    let mut cs: Vec<Client> = (0..5)
        .map(|i| Client::new(40000 + i, user.clone(), SECRET))
        .collect();
    all_but_the_last_allocate(&mut cs, &mut s, &mut env, &clock, Refusal::UserQuota);
    // Without the claim the node's per-user quota holds.
    let mut plain = Client::rest(41000, "p");
    allocate_ok(&mut plain, &mut s, &mut env, &clock);
    let mut plain2 = Client::rest(41001, "p");
    assert_eq!(
        code(&plain2.allocate(&mut s, &mut env, &clock, &[])),
        Some(486)
    );
}

/// Issue 21 §6: a validly signed USERNAME of 509 bytes or more is refused with 400 (it would be
/// kept for the allocation's life); 508 is allocated. REALM, NONCE and SOFTWARE are bounded at
/// 128 characters, the fixed-size TURN attributes at their size, Binding requests too.
#[test]
fn attributes_beyond_their_rfc_bounds_get_400() {
    let (mut s, mut env, clock) = setup();
    let id_for = |total: usize| "u".repeat(total - format!("{}:", T0 + 3600).len());
    let mut long = Client::rest(40000, &id_for(509));
    assert_eq!(long.username.len(), 509);
    let r = long.allocate(&mut s, &mut env, &clock, &[]);
    assert_eq!(code(&r), Some(400));
    assert_eq!(s.allocation_count(), 0);
    let mut edge = Client::rest(40001, &id_for(508));
    allocate_ok(&mut edge, &mut s, &mut env, &clock);
    let c = Client::rest(40002, "b");
    for (attr_type, value) in [
        (attr::SOFTWARE, "é".repeat(128).into_bytes()),
        (attr::SOFTWARE, vec![b'x'; 764]),
        (attr::REALM, vec![b'r'; 128]),
        (attr::NONCE, vec![b'n'; 200]),
        (attr::EVEN_PORT, vec![0x80, 0]),
        (attr::LIFETIME, vec![0, 0, 2]),
        (attr::USERHASH, vec![0; 31]),
    ] {
        for m in [method::BINDING, method::ALLOCATE] {
            let mut attrs = vec![(attr_type, value.clone())];
            if m == method::ALLOCATE {
                attrs.push((attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]));
            }
            let pkt = c.build(m, [3; 12], &attrs, false, true);
            let r = c.send(&mut s, &mut env, &clock, &pkt).bytes();
            assert_eq!(
                code(&r),
                Some(400),
                "{attr_type:#06x} of {} bytes",
                value.len()
            );
        }
    }
    // Within the bounds: a 127-character SOFTWARE (254 bytes) is fine.
    let pkt = c.build(
        method::BINDING,
        [4; 12],
        &[(attr::SOFTWARE, "é".repeat(127).into_bytes())],
        false,
        true,
    );
    assert_eq!(
        class(&c.send(&mut s, &mut env, &clock, &pkt).bytes()),
        Class::Success
    );
}
