//! Sharing a TLS port with a website: what the first bytes of a connection are, and the PROXY
//! protocol v2 header (haproxy's PROXY protocol specification, section 2.2) that tells the
//! site who its client really is. Pure functions; the driver moves the bytes.

use std::net::SocketAddr;

use crate::stun::MAGIC_COOKIE;

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
