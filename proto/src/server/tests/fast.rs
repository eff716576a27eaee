//! Issue 24 §1: the core decides what the kernel fast path may carry. A channel bound over UDP
//! and IPv4 is installed with the instant it stops being valid; a refresh moves that instant; a
//! deletion, an expiry or a reload's filter removes it; a TCP client or an untracked server
//! installs nothing; what the kernel carried is charged to the bandwidth caps.

use super::*;
use crate::server::{FastBinding, FastChange};

fn changes(s: &mut Server, clock: &Clock) -> Vec<FastChange> {
    let mut out = Vec::new();
    s.fast_path_changes(clock.now().mono, |c| out.push(c));
    out
}

fn installed(ch: &[FastChange]) -> Vec<FastBinding> {
    ch.iter()
        .filter_map(|c| match c {
            FastChange::Install(b) => Some(*b),
            FastChange::Remove(_) => None,
        })
        .collect()
}

fn removed(ch: &[FastChange]) -> Vec<FastBinding> {
    ch.iter()
        .filter_map(|c| match c {
            FastChange::Remove(b) => Some(*b),
            FastChange::Install(_) => None,
        })
        .collect()
}

#[test]
fn a_bound_channel_is_installed_until_its_earliest_expiry_and_removed_when_it_ends() {
    let (mut s, mut env, mut clock) = setup();
    let mut c = Client::rest(40000, "fast");
    allocate_ok(&mut c, &mut s, &mut env, &clock);
    // Not tracked: nothing, however bindings change.
    assert_eq!(
        class(&bind_channel(
            &mut c, &mut s, &mut env, &clock, 0x4000, PEER
        )),
        Class::Success
    );
    assert!(changes(&mut s, &clock).is_empty());

    s.track_fast_path();
    let ch = changes(&mut s, &clock);
    let b = installed(&ch);
    assert_eq!(b.len(), 1, "{ch:?}");
    assert!(removed(&ch).is_empty());
    assert_eq!(b[0].client, c.key);
    assert_eq!((b[0].channel, b[0].peer), (0x4000, sa(PEER)));
    // The permission (300 s) ends before the channel (600 s) and the allocation (600 s).
    assert_eq!(b[0].until, clock.now().mono + Duration::from_secs(300));
    assert!(changes(&mut s, &clock).is_empty(), "nothing changed since");

    // A CreatePermission refresh moves the instant: installed again.
    clock.secs = 100;
    assert_eq!(
        class(&c.permit(&mut s, &mut env, &clock, PEER)),
        Class::Success
    );
    let b2 = installed(&changes(&mut s, &clock));
    assert_eq!(b2.len(), 1);
    assert_eq!(b2[0].until, clock.now().mono + Duration::from_secs(300));

    // The permission expires (no refresh): removed when the timer runs.
    clock.secs = 401;
    s.handle_timeout(clock.now(), &mut env);
    let ch = changes(&mut s, &clock);
    assert_eq!(removed(&ch).len(), 1, "{ch:?}");
    assert!(installed(&ch).is_empty());

    // Bound again, then the allocation is deleted: removed.
    assert_eq!(
        class(&bind_channel(
            &mut c, &mut s, &mut env, &clock, 0x4000, PEER
        )),
        Class::Success
    );
    assert_eq!(installed(&changes(&mut s, &clock)).len(), 1);
    delete_allocation(&mut c, &mut s, &mut env, &clock);
    let ch = changes(&mut s, &clock);
    assert_eq!(removed(&ch).len(), 1, "{ch:?}");
    assert!(installed(&ch).is_empty());
}

#[test]
fn a_reload_denying_the_peer_removes_its_binding() {
    let (mut s, mut env, clock) = setup();
    s.track_fast_path();
    let mut c = Client::rest(40001, "fast");
    allocate_ok(&mut c, &mut s, &mut env, &clock);
    assert_eq!(
        class(&bind_channel(
            &mut c, &mut s, &mut env, &clock, 0x4001, PEER
        )),
        Class::Success
    );
    assert_eq!(installed(&changes(&mut s, &clock)).len(), 1);
    let live = s.shared().live();
    s.shared().replace_live(Live {
        credentials: live.credentials.clone(),
        filter: PeerFilter::new(&["93.184.216.0/24".parse().unwrap()], &[]),
        bandwidth: live.bandwidth.clone(),
    });
    // The core picks the reload up at its next turn.
    s.handle_timeout(clock.now(), &mut env);
    let ch = changes(&mut s, &clock);
    assert_eq!(removed(&ch).len(), 1, "{ch:?}");
    assert!(installed(&ch).is_empty());
}

#[test]
fn tcp_clients_stay_on_the_user_space_path() {
    let (mut s, mut env, clock) = setup();
    s.track_fast_path();
    let mut t = Client::rest(40002, "tcp");
    t.key.transport = Transport::Tcp;
    allocate_ok(&mut t, &mut s, &mut env, &clock);
    assert_eq!(
        class(&bind_channel(
            &mut t, &mut s, &mut env, &clock, 0x4000, PEER
        )),
        Class::Success
    );
    assert!(installed(&changes(&mut s, &clock)).is_empty(), "TCP");
}

/// The kernel carries only what the core reserved for it from the caps, period by period:
/// twice what it carried in the last period, at least a floor, at most what the meters hold;
/// what a grant did not use goes back; a reservation is exclusive (what the kernel holds, the
/// user-space path cannot admit), and what the kernel carried past its grant is still charged.
#[test]
fn the_kernel_carries_what_the_caps_grant_it_and_no_more() {
    use crate::limiter::{BandwidthCaps, Caps};
    let (mut s, mut env, mut clock) = setup();
    s.track_fast_path();
    let live = s.shared().live();
    s.shared().replace_live(Live {
        credentials: live.credentials.clone(),
        filter: live.filter.clone(),
        bandwidth: vec![BandwidthCaps {
            allocation: Caps {
                bytes_per_second: 100_000,
                packets_per_second: 100,
            },
            user: Caps::default(),
        }],
    });
    let mut c = Client::rest(40003, "capped");
    allocate_ok(&mut c, &mut s, &mut env, &clock);
    assert_eq!(
        class(&bind_channel(
            &mut c, &mut s, &mut env, &clock, 0x4000, PEER
        )),
        Class::Success
    );
    assert_eq!(installed(&changes(&mut s, &clock)).len(), 1);
    let now = clock.now().mono;
    let none = [(0, 0); 2];
    let both = [true; 2];
    // First grant: the floor (64 datagrams, 64 KiB), each direction.
    assert_eq!(
        s.fast_path_grant(now, &c.key, none, both),
        [(64, 65_536); 2]
    );
    // Client to peer used all its datagrams: the next grant would be twice that, but is what
    // the meter holds: what the reservation left (36), not a fresh 100. Its unused bytes came
    // back; peer to client used nothing: the floor again.
    assert_eq!(
        s.fast_path_grant(now, &c.key, [(64, 5_000), (0, 0)], both),
        [(36, 65_536), (64, 65_536)]
    );
    // The meter is empty of datagrams now: a grant at the same instant has none to give.
    assert_eq!(
        s.fast_path_grant(now, &c.key, [(36, 5_000), (0, 0)], both)[0].0,
        0
    );
    // A second later the meter has refilled (100/s, a second of burst).
    clock.secs = 1;
    let now = clock.now().mono;
    assert_eq!(s.fast_path_grant(now, &c.key, none, both)[0].0, 64);
    // Carried past the grant (a race of the kernel's): charged all the same, down to empty.
    assert_eq!(
        s.fast_path_grant(now, &c.key, [(120, 8_000), (0, 0)], both)[0].0,
        0
    );
    // Settled: what was granted and unused goes back, and nothing is outstanding.
    clock.secs = 3;
    let now = clock.now().mono;
    let g = s.fast_path_grant(now, &c.key, none, both);
    s.fast_path_settle(now, &c.key, none);
    assert_eq!(
        s.fast_path_grant(now, &c.key, none, both)[0],
        (g[0].0, g[0].1),
        "the same share again: the settled grant came back whole"
    );
    // A direction the kernel does not carry (a shaped flow's client leg) is granted nothing,
    // and what it held comes back.
    let g = s.fast_path_grant(now, &c.key, none, [true, false]);
    assert_eq!(g[1], (0, 0));
    assert_eq!(s.fast_path_grant(now, &c.key, none, both)[1], (64, 65_536));
    // A client without an allocation: nothing.
    let stranger = Client::rest(40009, "nobody");
    assert_eq!(s.fast_path_grant(now, &stranger.key, none, both), none);
}

/// Without caps, the kernel's grant has no limit.
#[test]
fn an_uncapped_flow_is_granted_without_limit() {
    let (mut s, mut env, clock) = setup();
    s.track_fast_path();
    let mut c = Client::rest(40004, "free");
    allocate_ok(&mut c, &mut s, &mut env, &clock);
    let g = s.fast_path_grant(clock.now().mono, &c.key, [(0, 0); 2], [true; 2]);
    assert_eq!(g, [(u64::MAX, u64::MAX); 2]);
}
