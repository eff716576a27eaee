//! Framing of TURN over a byte stream (TCP, TLS; RFC 8656 §12.5, RFC 8489 §6.2.2): the stream
//! carries STUN messages (20-byte header, Length a multiple of 4) and ChannelData (4-byte header,
//! payload padded to a multiple of 4), back to back. Sans-I/O: the driver appends what it reads
//! to a buffer and takes whole frames off its front.

use super::stun::{HEADER_LEN, MAGIC_COOKIE};

/// The longest frame: a STUN message with a 16-bit Length, or ChannelData of 65535 bytes padded.
pub const MAX_FRAME: usize = HEADER_LEN + 0xFFFF + 3;

/// Why a stream cannot be read any further; the connection must be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("neither STUN nor ChannelData (first bits {0:#04b})")]
    /// The first two bits are 10 or 11.
    UnknownKind(u8),
    #[error("a STUN message without the magic cookie")]
    /// STUN bits without the magic cookie.
    NoMagicCookie,
    #[error("a STUN Length that is not a multiple of 4")]
    /// A STUN Length that is not a multiple of 4.
    UnalignedLength,
    #[error("a frame of {0} bytes, more than this connection takes yet")]
    /// Longer than the buffer holds: a connection without an allocation takes
    /// [`SMALL_FRAME`] bytes at most.
    TooLarge(usize),
}

/// The longest frame a connection without an allocation may send: more than any Binding or
/// Allocate needs. Such connections hold a buffer of this size, not [`MAX_FRAME`].
pub const SMALL_FRAME: usize = 2048;

/// The length of the frame at the front of `buf` (padding included), `Ok(None)` if more bytes
/// are needed to tell, or an error if the stream holds garbage.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FramingError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    match buf[0] >> 6 {
        0 => {
            if len % 4 != 0 {
                return Err(FramingError::UnalignedLength);
            }
            if buf.len() >= 8
                && u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) != MAGIC_COOKIE
            {
                return Err(FramingError::NoMagicCookie);
            }
            let total = HEADER_LEN + len;
            Ok((buf.len() >= total).then_some(total))
        }
        1 => {
            let total = (4 + len + 3) & !3;
            Ok((buf.len() >= total).then_some(total))
        }
        k => Err(FramingError::UnknownKind(k)),
    }
}

/// The length the header at the front of `buf` declares, once its first 4 bytes are in.
fn declared_len(buf: &[u8]) -> Option<usize> {
    let len = u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize;
    Some(if buf[0] >> 6 == 0 {
        HEADER_LEN + len
    } else {
        (4 + len + 3) & !3
    })
}

/// A read buffer for one connection: bytes read land after `end`, whole frames are taken from
/// `start`. It starts at [`SMALL_FRAME`] ([`StreamBuf::small`]) and grows once, to hold any
/// frame ([`MAX_FRAME`]), when the connection holds an allocation.
pub struct StreamBuf {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Default for StreamBuf {
    fn default() -> Self {
        StreamBuf {
            buf: vec![0u8; MAX_FRAME + 1].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }
}

impl StreamBuf {
    /// A buffer for a connection that holds no allocation yet: frames up to [`SMALL_FRAME`].
    pub fn small() -> Self {
        StreamBuf {
            buf: vec![0u8; SMALL_FRAME].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Grows to hold any frame (once the connection holds an allocation), keeping what is
    /// pending.
    pub fn grow(&mut self) {
        if self.buf.len() > MAX_FRAME {
            return;
        }
        let mut big = vec![0u8; MAX_FRAME + 1].into_boxed_slice();
        let pending = self.end - self.start;
        big[..pending].copy_from_slice(&self.buf[self.start..self.end]);
        self.buf = big;
        self.start = 0;
        self.end = pending;
    }

    /// Bytes this buffer holds (its memory).
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Where the next read goes. Moves a partial frame to the front first if the free space
    /// could not hold the rest of it.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 && (self.start == self.end || self.buf.len() - self.end < MAX_FRAME) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`StreamBuf::spare`].
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// The next whole frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FramingError> {
        let pending = &self.buf[self.start..self.end];
        match frame_len(pending)? {
            Some(n) => {
                let at = self.start;
                self.start += n;
                Ok(Some(&self.buf[at..at + n]))
            }
            None => {
                // A frame that can never fit: say so now, not when the buffer is full.
                if let Some(total) = declared_len(pending)
                    && total > self.buf.len()
                {
                    return Err(FramingError::TooLarge(total));
                }
                Ok(None)
            }
        }
    }

    /// Bytes held that do not make a whole frame yet.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{Class, Writer, method};

    /// Issue 14 §3: a connection without an allocation holds 2 KiB, not 64; a frame longer
    /// than that is refused at its header; after growing, any frame passes, and what was
    /// pending survives the growth.
    #[test]
    fn small_buffer_until_grown() {
        let mut sb = StreamBuf::small();
        assert_eq!(sb.capacity(), SMALL_FRAME);
        let big = stun(1, 3000);
        sb.spare()[..8].copy_from_slice(&big[..8]);
        sb.filled(8);
        assert_eq!(sb.next_frame(), Err(FramingError::TooLarge(big.len())));
        let mut sb = StreamBuf::small();
        let small = stun(2, 100);
        sb.spare()[..small.len()].copy_from_slice(&small);
        sb.filled(small.len());
        sb.spare()[..10].copy_from_slice(&big[..10]);
        sb.filled(10);
        assert_eq!(sb.next_frame().unwrap().map(|f| f.to_vec()), Some(small));
        sb.grow();
        assert!(sb.capacity() > MAX_FRAME);
        let rest = &big[10..];
        sb.spare()[..rest.len()].copy_from_slice(rest);
        sb.filled(rest.len());
        assert_eq!(sb.next_frame().unwrap().map(|f| f.to_vec()), Some(big));
    }

    fn stun(txid: u8, data_len: usize) -> Vec<u8> {
        let mut b = vec![0u8; data_len + 64];
        let mut w = Writer::new(&mut b, method::BINDING, Class::Request, &[txid; 12]).unwrap();
        if data_len > 0 {
            w.attr(crate::stun::attr::SOFTWARE, &vec![b'x'; data_len])
                .unwrap();
        }
        let n = w.finish();
        b.truncate(n);
        b
    }

    fn channel(ch: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = ch.to_be_bytes().to_vec();
        b.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        b.extend_from_slice(payload);
        while b.len() % 4 != 0 {
            b.push(0);
        }
        b
    }

    /// Feeds `stream` in pieces of `chunk` bytes and collects the frames.
    fn split(stream: &[u8], chunk: usize) -> Result<Vec<Vec<u8>>, FramingError> {
        let mut sb = StreamBuf::default();
        let mut out = Vec::new();
        for mut piece in stream.chunks(chunk) {
            // Like a read: as much as fits.
            while !piece.is_empty() {
                let spare = sb.spare();
                assert!(!spare.is_empty(), "a read must always have room");
                let n = spare.len().min(piece.len());
                spare[..n].copy_from_slice(&piece[..n]);
                sb.filled(n);
                piece = &piece[n..];
                while let Some(f) = sb.next_frame()? {
                    out.push(f.to_vec());
                }
            }
        }
        Ok(out)
    }

    #[test]
    fn coalesced_and_fragmented_frames_come_out_whole_and_in_order() {
        let frames = vec![
            stun(1, 0),
            channel(0x4001, b"abc"),
            stun(2, 5),
            channel(0x4002, &[7; 1200]),
            channel(0x4003, b""),
            stun(3, 300),
        ];
        let stream: Vec<u8> = frames.concat();
        for chunk in [1, 2, 3, 5, 7, 64, 1000, stream.len()] {
            assert_eq!(split(&stream, chunk).unwrap(), frames, "chunks of {chunk}");
        }
    }

    #[test]
    fn channel_data_is_padded_to_four_and_its_padding_consumed() {
        let f = channel(0x4000, b"12345");
        assert_eq!(f.len(), 12);
        assert_eq!(frame_len(&f[..11]), Ok(None));
        assert_eq!(frame_len(&f), Ok(Some(12)));
        let mut two = f.clone();
        two.extend(channel(0x4000, b"z"));
        assert_eq!(split(&two, 3).unwrap().len(), 2);
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(
            frame_len(&[0x80, 0, 0, 0]),
            Err(FramingError::UnknownKind(2))
        );
        // "GET " starts with 0x47 = 0b01..., which reads as ChannelData: a TURN port cannot tell
        // it from a frame; the core then drops it (no such channel). A TLS ClientHello (0x16)
        // on a TCP port reads as a STUN header and fails the cookie check.
        let hello = [0x16, 0x03, 0x01, 0x00, 0xC8, 0x01, 0x00, 0x00];
        assert_eq!(frame_len(&hello), Err(FramingError::NoMagicCookie));
        let mut s = stun(1, 0);
        s[3] = 2; // Length 2
        assert_eq!(frame_len(&s), Err(FramingError::UnalignedLength));
        assert!(split(&[0xC0; 8], 3).is_err());
    }

    #[test]
    fn the_largest_frames_fit_and_the_buffer_never_grows() {
        let big = channel(0x4000, &vec![1u8; 0xFFFF]);
        assert_eq!(big.len(), 65_540);
        assert!(big.len() <= MAX_FRAME);
        let mut stream = stun(9, 0);
        stream.extend(&big);
        stream.extend(stun(10, 0));
        stream.extend(&big);
        let frames = split(&stream, 4096).unwrap();
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[1], big);
        let long: Vec<u8> = std::iter::repeat_n(stream.as_slice(), 10)
            .flatten()
            .copied()
            .collect();
        assert_eq!(split(&long, 9000).unwrap().len(), 40);
    }
}
