//! What the relay may say about callers in its logs.
//!
//! By default a log line never holds a client IP, a peer address or a username. Where events must
//! be correlated (an allocation's creation and deletion), the log carries a tag: a keyed hash of
//! the identifier under a random per-process secret and the current UTC day, so a tag means
//! nothing outside this process and the same caller gets an unrelated tag the next day. An
//! operator who needs the real values opts in with `log_personal_data: true`.

use std::fmt;
use std::net::SocketAddr;

use ring::hmac;

/// How long one tag key lives.
pub const TAG_KEY_PERIOD_SECS: u64 = 86_400;

/// Turns personal identifiers into what a log line may hold.
pub struct Redactor {
    key: hmac::Key,
    personal: bool,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("personal", &self.personal)
            .finish()
    }
}

/// A value to put in a log line: the identifier itself (operator opted in) or its tag.
pub enum Shown<'a, T: fmt::Display + ?Sized> {
    /// The value itself (the operator opted in to personal data in logs).
    Plain(&'a T),
    /// A keyed, daily-rotating tag of it.
    Tag([u8; 8]),
}

impl<T: fmt::Display + ?Sized> fmt::Display for Shown<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shown::Plain(v) => v.fmt(f),
            Shown::Tag(t) => {
                f.write_str("t:")?;
                t.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

impl Redactor {
    /// A redactor with a fresh random secret. `personal` logs identifiers in the clear.
    pub fn new(personal: bool) -> Self {
        let mut secret = [0u8; 32];
        // Without the OS RNG the tags would be guessable; a fixed fallback is still keyed by day
        // but we refuse to pretend: fall back to a time-derived secret only if getrandom fails.
        if getrandom::fill(&mut secret).is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            secret[..16].copy_from_slice(&t.to_le_bytes());
        }
        Self::with_secret(&secret, personal)
    }

    /// A redactor with a given secret (tests).
    pub fn with_secret(secret: &[u8], personal: bool) -> Self {
        Redactor {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            personal,
        }
    }

    fn tag_bytes(&self, unix_now: u64, kind: u8, id: &[u8]) -> [u8; 8] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&(unix_now / TAG_KEY_PERIOD_SECS).to_be_bytes());
        ctx.update(&[kind]);
        ctx.update(id);
        let mut out = [0u8; 8];
        out.copy_from_slice(&ctx.sign().as_ref()[..8]);
        out
    }

    /// A client's transport address as a log line may show it.
    pub fn client<'a>(&self, unix_now: u64, addr: &'a SocketAddr) -> Shown<'a, SocketAddr> {
        if self.personal {
            return Shown::Plain(addr);
        }
        let mut b = [0u8; 18];
        match addr.ip() {
            std::net::IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
            std::net::IpAddr::V6(v6) => b[..16].copy_from_slice(&v6.octets()),
        }
        b[16..].copy_from_slice(&addr.port().to_be_bytes());
        Shown::Tag(self.tag_bytes(unix_now, b'c', &b))
    }

    /// A username as a log line may show it.
    pub fn user<'a>(&self, unix_now: u64, name: &'a str) -> Shown<'a, str> {
        if self.personal {
            return Shown::Plain(name);
        }
        Shown::Tag(self.tag_bytes(unix_now, b'u', name.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_hide_the_identifier_and_rotate_daily() {
        let r = Redactor::with_secret(b"k", false);
        let a: SocketAddr = "203.0.113.7:5000".parse().unwrap();
        let day1 = r.client(86_400 * 10 + 5, &a).to_string();
        let same_day = r.client(86_400 * 10 + 80_000, &a).to_string();
        let day2 = r.client(86_400 * 11 + 5, &a).to_string();
        assert!(!day1.contains("203.0.113.7"), "{day1}");
        assert!(day1.starts_with("t:") && day1.len() == 18, "{day1}");
        assert_eq!(day1, same_day, "stable within a day so events correlate");
        assert_ne!(day1, day2, "a new key every day");
        let u = r.user(5, "1700000000:alice").to_string();
        assert!(!u.contains("alice"), "{u}");
        // Another process (another secret) gives another tag.
        let other = Redactor::with_secret(b"other", false);
        assert_ne!(other.client(86_400 * 10 + 5, &a).to_string(), day1);
    }

    #[test]
    fn opt_in_shows_values() {
        let r = Redactor::with_secret(b"k", true);
        let a: SocketAddr = "203.0.113.7:5000".parse().unwrap();
        assert_eq!(r.client(0, &a).to_string(), "203.0.113.7:5000");
        assert_eq!(r.user(0, "bob").to_string(), "bob");
    }
}
