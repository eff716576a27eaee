//! Sharing a TLS port with a website: what the first bytes of a connection are, and the PROXY
//! protocol v2 header (haproxy's PROXY protocol specification, section 2.2) that tells the
//! site who its client really is. Pure functions; the driver moves the bytes.

use std::net::SocketAddr;

use crate::auth::{Credentials, Key};
use crate::stun::{Class, MAGIC_COOKIE, Message, attr};

/// What the first bytes of a stream are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstBytes {
    /// Too few bytes to tell.
    Unknown,
    /// A TLS handshake record (a ClientHello, if the client is honest).
    TlsHandshake,
    /// The header of a STUN message: TURN.
    Stun,
    /// Anything else (an HTTP request, the HTTP/2 preface, garbage): the site's.
    Other,
}

/// Classifies the first bytes a client sent (or, after a TLS handshake, the first plaintext).
/// A STUN header is 20 bytes: the two top bits zero, a length that is a multiple of 4 and the
/// magic cookie; 8 bytes are enough to tell it from everything a web client sends first.
pub fn classify(b: &[u8]) -> FirstBytes {
    match b.first() {
        None => FirstBytes::Unknown,
        Some(0x16) if b.len() >= 3 => {
            // Record type handshake, then a version 3.x.
            if b[1] == 3 {
                FirstBytes::TlsHandshake
            } else {
                FirstBytes::Other
            }
        }
        Some(&f) if f & 0xC0 != 0 => FirstBytes::Other,
        Some(_) if b.len() < 8 => FirstBytes::Unknown,
        Some(_) => {
            let len = u16::from_be_bytes([b[2], b[3]]);
            let cookie = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            if cookie == MAGIC_COOKIE && len % 4 == 0 {
                FirstBytes::Stun
            } else {
                FirstBytes::Other
            }
        }
    }
}

/// The largest first STUN message strict mode reads before it leaves the connection to the
/// site (an Allocate with every attribute a client sends is a few hundred bytes).
pub const STRICT_MAX_MESSAGE: usize = 2048;

/// How many bytes the STUN message at the front of `b` takes, once its header is in.
pub fn stun_len(b: &[u8]) -> Option<usize> {
    (b.len() >= 4).then(|| 20 + usize::from(u16::from_be_bytes([b[2], b[3]])))
}

/// Strict mode's test of the first message on a shared port (issue 23 §3): a request signed
/// (MESSAGE-INTEGRITY or -SHA256) with a REST credential in force, in `realm`, carrying the
/// nonce issued with that credential. Whatever fails it goes to the site, so a prober who
/// speaks TURN but holds no credential never meets a 401.
pub fn strict_admits(msg: &[u8], creds: &Credentials, realm: &str, unix_now: u64) -> bool {
    let Ok(m) = Message::decode(msg) else {
        return false;
    };
    let (Some(user), Some(r), Some(nonce)) = (
        m.get(attr::USERNAME),
        m.get(attr::REALM),
        m.get(attr::NONCE),
    ) else {
        return false;
    };
    let Ok(username) = std::str::from_utf8(user) else {
        return false;
    };
    if m.class != Class::Request
        || !m.has_integrity()
        || r != realm.as_bytes()
        || !creds.issued_nonce(username, nonce)
    {
        return false;
    }
    let Ok(alg) = crate::server::password_algorithm(&m) else {
        return false;
    };
    creds.for_each_password(username, unix_now, |pw| {
        let k = Key::derive(alg, user, r, pw);
        m.verify_integrity(k.as_bytes()).is_some()
    }) == Ok(true)
}

/// The 12-byte signature every PROXY v2 header starts with.
pub const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// A PROXY protocol v2 header for a proxied TCP connection from `client` to `local` (the
/// address it reached). Mixed families (never seen on one socket) are sent as the client's
/// family with the local address mapped or, failing that, as LOCAL (no address).
pub fn proxy_v2(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let mut h = PROXY_V2_SIGNATURE.to_vec();
    // Version 2, command PROXY.
    h.push(0x21);
    let (family, body): (u8, Vec<u8>) = match (client, local) {
        (SocketAddr::V4(c), SocketAddr::V4(l)) => {
            let mut b = Vec::with_capacity(12);
            b.extend_from_slice(&c.ip().octets());
            b.extend_from_slice(&l.ip().octets());
            b.extend_from_slice(&c.port().to_be_bytes());
            b.extend_from_slice(&l.port().to_be_bytes());
            // AF_INET, STREAM.
            (0x11, b)
        }
        (SocketAddr::V6(c), l) => {
            let l6 = match l {
                SocketAddr::V6(l) => *l.ip(),
                SocketAddr::V4(l) => l.ip().to_ipv6_mapped(),
            };
            let mut b = Vec::with_capacity(36);
            b.extend_from_slice(&c.ip().octets());
            b.extend_from_slice(&l6.octets());
            b.extend_from_slice(&c.port().to_be_bytes());
            b.extend_from_slice(&l.port().to_be_bytes());
            // AF_INET6, STREAM.
            (0x21, b)
        }
        (SocketAddr::V4(c), SocketAddr::V6(l)) => {
            let mut b = Vec::with_capacity(36);
            b.extend_from_slice(&c.ip().to_ipv6_mapped().octets());
            b.extend_from_slice(&l.ip().octets());
            b.extend_from_slice(&c.port().to_be_bytes());
            b.extend_from_slice(&l.port().to_be_bytes());
            (0x21, b)
        }
    };
    h.push(family);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_tell_tls_stun_and_the_rest_apart() {
        // A ClientHello record header.
        assert_eq!(classify(&[0x16, 3, 1, 0, 200]), FirstBytes::TlsHandshake);
        assert_eq!(classify(&[0x16, 2, 0]), FirstBytes::Other);
        // An Allocate request header.
        let mut stun = vec![0x00, 0x03, 0x00, 0x08];
        stun.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        assert_eq!(classify(&stun), FirstBytes::Stun);
        assert_eq!(classify(&stun[..6]), FirstBytes::Unknown);
        // A length that is no multiple of 4, a wrong cookie.
        let mut odd = stun.clone();
        odd[3] = 7;
        assert_eq!(classify(&odd), FirstBytes::Other);
        let mut wrong = stun.clone();
        wrong[7] ^= 1;
        assert_eq!(classify(&wrong), FirstBytes::Other);
        // What web clients send first.
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), FirstBytes::Other);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), FirstBytes::Other);
        assert_eq!(classify(b""), FirstBytes::Unknown);
    }

    /// Strict mode admits a request signed with a credential in force and carrying the nonce
    /// issued with it; everything a prober without one can send is left to the site.
    #[test]
    fn strict_mode_admits_signed_requests_with_the_issued_nonce_only() {
        use crate::auth::{ALG_SHA256, Credentials, NonceKey, credential_nonce};
        use crate::stun::method;
        use crate::testing::{Client, REALM, SECRET, T0};
        let creds = Credentials {
            secrets: vec![SECRET.to_vec()],
            static_users: vec![("dev".into(), "dev".into())],
            ..Default::default()
        };
        let now = T0;
        let transport = [(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])];
        let build = |c: &mut Client, signed: bool| {
            let txid = c.txid();
            c.build(method::ALLOCATE, txid, &transport, signed, true)
        };
        let mut c = Client::rest(40000, "native");
        c.nonce = credential_nonce(SECRET, &c.username).into_bytes();
        let good = build(&mut c, true);
        assert_eq!(stun_len(&good), Some(good.len()));
        assert!(strict_admits(&good, &creds, REALM, now));
        c.alg = ALG_SHA256;
        assert!(strict_admits(&build(&mut c, true), &creds, REALM, now));
        c.alg = crate::auth::ALG_MD5;

        assert!(
            !strict_admits(&build(&mut c, false), &creds, REALM, now),
            "unsigned"
        );
        assert!(
            !strict_admits(&good, &creds, "other.realm", now),
            "another realm"
        );
        assert!(!strict_admits(&good, &creds, REALM, T0 + 7200), "expired");
        assert!(
            !strict_admits(&good[..good.len() - 8], &creds, REALM, now),
            "cut short"
        );
        let mut flipped = good.clone();
        let at = flipped.len() - 12;
        flipped[at] ^= 1;
        assert!(
            !strict_admits(&flipped, &creds, REALM, now),
            "integrity altered"
        );
        let rotated = Credentials {
            secrets: vec![b"another".to_vec()],
            ..Default::default()
        };
        assert!(
            !strict_admits(&good, &rotated, REALM, now),
            "secret not in force"
        );
        // A nonce from a challenge (what a prober gets by asking) is not the issued one.
        c.nonce = NonceKey::new(b"k")
            .mint(T0 as u32 + 60, 0, c.key.addr)
            .to_vec();
        assert!(
            !strict_admits(&build(&mut c, true), &creds, REALM, now),
            "node nonce"
        );
        // A static user has no issued nonce.
        let mut dev = Client::rest(40001, "x");
        dev.username = "dev".into();
        dev.password = "dev".into();
        dev.nonce = credential_nonce(SECRET, "dev").into_bytes();
        assert!(
            !strict_admits(&build(&mut dev, true), &creds, REALM, now),
            "static user"
        );
        // A success response (class), and no STUN at all.
        let mut resp = good.clone();
        resp[0] |= 0x01; // class bit C1: success
        assert!(!strict_admits(&resp, &creds, REALM, now), "not a request");
        assert!(!strict_admits(
            b"GET / HTTP/1.1\r\n\r\n",
            &creds,
            REALM,
            now
        ));
    }

    #[test]
    fn proxy_v2_headers_follow_the_specification() {
        let h = proxy_v2(
            "192.0.2.7:51000".parse().unwrap(),
            "198.51.100.1:443".parse().unwrap(),
        );
        assert_eq!(&h[..12], &PROXY_V2_SIGNATURE);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12);
        assert_eq!(&h[16..20], &[192, 0, 2, 7]);
        assert_eq!(&h[20..24], &[198, 51, 100, 1]);
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 51000);
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), 443);
        assert_eq!(h.len(), 28);
        let h6 = proxy_v2(
            "[2001:db8::7]:51000".parse().unwrap(),
            "[2001:db8::1]:443".parse().unwrap(),
        );
        assert_eq!(h6[13], 0x21);
        assert_eq!(u16::from_be_bytes([h6[14], h6[15]]), 36);
        assert_eq!(h6.len(), 16 + 36);
        assert_eq!(h6[16], 0x20);
        assert_eq!(h6[31], 7);
    }
}
