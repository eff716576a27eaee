//! Errors the core answers with, and the one place that writes, signs and logs a response.

use std::fmt;

use super::{Now, Server};
use crate::auth::{self, Key};
use crate::stun::{self, Class, Integrity, Message, Overflow, Writer, attr};

/// An error response to send: the STUN error code (RFC 8489 §14.8, RFC 8656 §19) and why, for
/// logs and tests. The reason phrase on the wire is the RFC's short one for the code, never
/// this text: an error tells a client what to do, not how the server decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TurnError {
    /// The STUN error code.
    pub code: u16,
    /// Why, in a few words (logged at debug level).
    pub reason: &'static str,
}

impl TurnError {
    /// An error with this code and reason.
    pub const fn new(code: u16, reason: &'static str) -> Self {
        TurnError { code, reason }
    }

    /// 400 Bad Request.
    pub const fn bad_request(reason: &'static str) -> Self {
        TurnError::new(400, reason)
    }
}

impl fmt::Display for TurnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.code,
            stun::reason_phrase(self.code),
            self.reason
        )
    }
}

impl std::error::Error for TurnError {}

/// How a request handler did not succeed.
#[derive(Debug)]
pub(super) enum Fail {
    /// An error response, signed if the request authenticated.
    Error(TurnError),
    /// 401 or 438: an unsigned challenge with REALM, a fresh NONCE and PASSWORD-ALGORITHMS.
    Challenge(TurnError),
    /// 420 with the request's unknown comprehension-required attributes.
    UnknownAttributes,
    /// The response did not fit the reply buffer: a bug, reported, never a silent drop.
    Overflow,
}

impl From<TurnError> for Fail {
    fn from(e: TurnError) -> Self {
        Fail::Error(e)
    }
}

impl From<Overflow> for Fail {
    fn from(_: Overflow) -> Self {
        Fail::Overflow
    }
}

/// How to seal a response.
#[derive(Clone, Copy)]
pub(super) struct Seal {
    pub(super) integrity: Option<(Integrity, Key)>,
    pub(super) fingerprint: bool,
}

impl Seal {
    /// Unsigned; FINGERPRINT if the request had one.
    pub(super) fn unsigned(m: &Message) -> Self {
        Seal {
            integrity: None,
            fingerprint: m.has_fingerprint(),
        }
    }
}

/// A request being answered.
pub(super) struct Req<'m, 'b> {
    pub(super) now: Now,
    pub(super) from: super::ClientKey,
    pub(super) m: &'m Message<'b>,
    pub(super) seal: Seal,
}

/// The debug line of every error response: method, code and why; never who asked.
fn log_refusal(r: &Req, e: TurnError, what: &'static str) {
    tracing::debug!(
        method = r.m.method,
        code = e.code,
        reason = e.reason,
        "{what}"
    );
}

impl Server {
    /// Starts a response that carries no SOFTWARE, whatever the configuration: one to an
    /// unauthenticated request (a spoofed source can aim it at a victim).
    pub(super) fn begin_unsigned<'o>(
        out: &'o mut [u8],
        m: &Message,
        class: Class,
    ) -> Result<Writer<'o>, Overflow> {
        Writer::new(out, m.method, class, m.transaction_id())
    }

    /// Starts a response to `m` of class `class` (with SOFTWARE when configured).
    pub(super) fn begin<'o>(
        &self,
        out: &'o mut [u8],
        m: &Message,
        class: Class,
    ) -> Result<Writer<'o>, Overflow> {
        let mut w = Writer::new(out, m.method, class, m.transaction_id())?;
        if let Some(s) = &self.shared.config.software {
            w.attr(attr::SOFTWARE, s.as_bytes())?;
        }
        Ok(w)
    }

    /// Signs and fingerprints a response as `seal` says; returns its length.
    pub(super) fn seal(mut w: Writer, seal: Seal) -> Result<usize, Overflow> {
        if let Some((kind, key)) = seal.integrity {
            w.integrity(kind, key.as_bytes())?;
        }
        if seal.fingerprint {
            w.fingerprint()?;
        }
        Ok(w.finish())
    }

    /// A success response with no attributes of its own.
    pub(super) fn success(&self, r: &Req, out: &mut [u8]) -> Result<usize, Fail> {
        let w = self.begin(out, r.m, Class::Success)?;
        Ok(Self::seal(w, r.seal)?)
    }

    /// Turns a handler's outcome into what is sent: the one place that writes, signs and logs
    /// an error response.
    ///
    /// A reply to an unauthenticated UDP request (a challenge, an error before
    /// authentication, a Binding response) is sent only while its source prefix is within its
    /// rate: a spoofed source must not turn the node into an amplifier. Bindings have a budget
    /// of their own, larger: their answer is at most 1.6× the request (2.2× on IPv6), and the
    /// phones behind one carrier-grade NAT address all gather candidates through it.
    pub(super) fn respond(
        &mut self,
        r: &Req,
        out: &mut [u8],
        outcome: Result<usize, Fail>,
    ) -> Option<usize> {
        if r.seal.integrity.is_none() && !r.from.transport.is_stream() {
            let ms = self.millis(r.now.mono);
            let limiter = if r.m.method == crate::stun::method::BINDING {
                &mut self.bindings
            } else {
                &mut self.unauthenticated
            };
            if !limiter.allow(r.from.addr.ip(), ms) {
                self.stats.unauthenticated_suppressed += 1;
                return None;
            }
        }
        let written = match outcome {
            Ok(n) => return Some(n),
            Err(Fail::Overflow) => Err(Overflow),
            Err(Fail::Error(e)) => {
                log_refusal(r, e, "error response");
                self.write_error(r, out, e)
            }
            Err(Fail::Challenge(e)) => {
                log_refusal(r, e, "challenge");
                self.write_challenge(r, out, e.code)
            }
            Err(Fail::UnknownAttributes) => self.write_unknown(r, out),
        };
        match written {
            Ok(n) => Some(n),
            Err(Overflow) => {
                tracing::error!(
                    method = r.m.method,
                    "a response did not fit the reply buffer: nothing sent (a bug, please report)"
                );
                debug_assert!(false, "response overflow for method {}", r.m.method);
                None
            }
        }
    }

    /// An error, with its reason phrase and SOFTWARE only when signed.
    fn write_error(&self, r: &Req, out: &mut [u8], e: TurnError) -> Result<usize, Overflow> {
        if r.seal.integrity.is_some() {
            let mut w = self.begin(out, r.m, Class::Error)?;
            w.error(e.code)?;
            Self::seal(w, r.seal)
        } else {
            let mut w = Self::begin_unsigned(out, r.m, Class::Error)?;
            w.error_bare(e.code)?;
            Self::seal(w, r.seal)
        }
    }

    fn write_challenge(&self, r: &Req, out: &mut [u8], code: u16) -> Result<usize, Overflow> {
        let cfg = &self.shared.config;
        let expiry = r
            .now
            .unix
            .saturating_add(cfg.nonce_lifetime as u64)
            .min(u32::MAX as u64) as u32;
        let nonce = self
            .shared
            .nonces
            .mint(expiry, r.from.listener, r.from.addr);
        // As small as RFC 8489 §9.2 allows: no reason phrase, no SOFTWARE, a 29-byte nonce;
        // PASSWORD-ALGORITHMS because the nonce announces it (SHA-256 keys).
        let mut w = Self::begin_unsigned(out, r.m, Class::Error)?;
        w.error_bare(code)?;
        w.attr(attr::REALM, cfg.realm.as_bytes())?;
        w.attr(attr::NONCE, &nonce)?;
        w.attr(attr::PASSWORD_ALGORITHMS, &auth::PASSWORD_ALGORITHMS)?;
        Self::seal(w, Seal::unsigned(r.m))
    }

    fn write_unknown(&self, r: &Req, out: &mut [u8]) -> Result<usize, Overflow> {
        let mut w = if r.seal.integrity.is_some() {
            let mut w = self.begin(out, r.m, Class::Error)?;
            w.error(420)?;
            w
        } else {
            let mut w = Self::begin_unsigned(out, r.m, Class::Error)?;
            w.error_bare(420)?;
            w
        };
        let unknown = r.m.unknown_required();
        let v = w.attr_slot(attr::UNKNOWN_ATTRIBUTES, unknown.len() * 2)?;
        for (i, t) in unknown.iter().enumerate() {
            v[i * 2..i * 2 + 2].copy_from_slice(&t.to_be_bytes());
        }
        Self::seal(w, r.seal)
    }
}
