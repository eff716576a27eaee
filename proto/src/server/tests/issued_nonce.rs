//! Issue 23 §3: a client given the nonce issued with its credential sends its first Allocate
//! already authenticated, and the core takes it with no 401 round trip; the nonce serves the
//! allocation's later requests too, and only its own username.

use super::*;
use crate::auth::credential_nonce;

#[test]
fn a_first_allocate_with_the_issued_nonce_needs_no_challenge() {
    let (mut s, mut env, clock) = setup();
    for (port, alg) in [(41000, auth::ALG_MD5), (41001, auth::ALG_SHA256)] {
        let mut c = Client::rest(port, "native");
        c.alg = alg;
        c.nonce = credential_nonce(SECRET, &c.username).into_bytes();
        let txid = c.txid();
        let pkt = c.build(
            method::ALLOCATE,
            txid,
            &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
            true,
            true,
        );
        let r = c.send(&mut s, &mut env, &clock, &pkt).bytes();
        assert_eq!(class(&r), Class::Success, "alg {alg}: {:?}", code(&r));
        assert!(c.verify(&r).is_some(), "signed with the credential's key");
        // Later requests on the allocation carry the same nonce.
        let txid = c.txid();
        let pkt = c.build(
            method::CREATE_PERMISSION,
            txid,
            &[(attr::XOR_PEER_ADDRESS, PEER.as_bytes().to_vec())],
            true,
            true,
        );
        let r = c.send(&mut s, &mut env, &clock, &pkt).bytes();
        assert_eq!(class(&r), Class::Success, "{:?}", code(&r));
    }
    // Another user's issued nonce is no nonce of ours for this one: 438 with a fresh one.
    let mut c = Client::rest(41002, "mallory");
    let other = Client::rest(41003, "alice");
    c.nonce = credential_nonce(SECRET, &other.username).into_bytes();
    let txid = c.txid();
    let pkt = c.build(
        method::ALLOCATE,
        txid,
        &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
        true,
        true,
    );
    let r = c.send(&mut s, &mut env, &clock, &pkt).bytes();
    assert_eq!(code(&r), Some(438));
}
