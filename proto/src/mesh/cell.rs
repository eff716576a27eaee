//! The cell: the one unit a link carries, [`CELL_SIZE`] bytes, whatever is in it.
//!
//! ```text
//! 0      version (1)
//! 1..5   sequence number, big-endian, +1 per cell (wrapping)
//! 5..7   offset in the body of the first record that starts in this cell, or NO_RECORD
//! 7..    body: the rest of a record begun in an earlier cell, then records, then zeros
//! ```
//!
//! A record is one relayed datagram:
//!
//! ```text
//! kind (1: datagram; 0: padding to the end of the cell)
//! source: range index (1) and port (2)        in the sender's announced relayed ranges
//! destination: range index (1) and port (2)   in the receiver's announced relayed ranges
//! length (2), then the payload
//! ```
//!
//! A record longer than what is left of a cell goes on in the next cells, so one datagram may
//! span several cells and one cell carry several datagrams. The sequence number lets the
//! receiver notice a lost cell and drop the record it cut, then resynchronise at the next
//! record start (the `first` offset). Everything here is checked: a cell from a linked relay is
//! input like any other.

use super::Endpoint;

/// Bytes of every cell, on every link of a cluster: the QUIC datagram payload. With QUIC's
/// packet pinned at [`super::QUIC_PACKET`] bytes, what is left after QUIC's own headers (~40
/// bytes with quinn's 8-byte connection IDs) holds this, and the packet is padded to the rest.
pub const CELL_SIZE: usize = 1200;
/// Bytes of a cell's header.
pub const CELL_HEADER: usize = 7;
/// Bytes of a cell's body.
pub const CELL_BODY: usize = CELL_SIZE - CELL_HEADER;
/// Bytes of a record's header.
pub const RECORD_HEADER: usize = 9;
/// The `first` value of a cell in which no record starts.
pub const NO_RECORD: u16 = 0xFFFF;
/// The cell format's version.
pub const VERSION: u8 = 1;

const KIND_PADDING: u8 = 0;
const KIND_DATAGRAM: u8 = 1;

/// Writes a record's header: datagram `len` bytes long, from `src` to `dst`.
pub(super) fn record_header(src: Endpoint, dst: Endpoint, len: u16) -> [u8; RECORD_HEADER] {
    let s = src.port.to_be_bytes();
    let d = dst.port.to_be_bytes();
    let l = len.to_be_bytes();
    [
        KIND_DATAGRAM,
        src.range,
        s[0],
        s[1],
        dst.range,
        d[0],
        d[1],
        l[0],
        l[1],
    ]
}

/// Writes a cell's header.
pub(super) fn write_header(cell: &mut [u8], seq: u32, first: u16) {
    cell[0] = VERSION;
    cell[1..5].copy_from_slice(&seq.to_be_bytes());
    cell[5..7].copy_from_slice(&first.to_be_bytes());
}

/// A datagram taken out of cells.
#[derive(Debug, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Where it came from, in the sender's announced ranges.
    pub src: Endpoint,
    /// Where it goes, in the receiver's announced ranges.
    pub dst: Endpoint,
    /// The payload.
    pub payload: &'a [u8],
}

crate::counters! {
/// What a receiver counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxStats {
    /// Cells taken in.
    pub cells: u64,
    /// Cells that carried no record byte (cover).
    pub cover_cells: u64,
    /// Datagrams handed out.
    pub datagrams: u64,
    /// Cells missing between two received (sequence gaps), and cells received out of order.
    pub lost_cells: u64,
    /// Datagrams lost because a cell carrying part of them was lost.
    pub cut_datagrams: u64,
    /// Cells of the wrong size or version, or whose records did not add up: dropped whole.
    pub malformed: u64,
}
}

/// Takes cells in order of arrival and hands out the datagrams they carry. Holds at most one
/// datagram in progress (up to 64 KiB), reused.
#[derive(Debug, Default)]
pub struct Reassembler {
    /// The sequence number the next cell should carry, once one was seen.
    next: Option<u32>,
    /// The record in progress: header and what arrived of its payload.
    partial: Vec<u8>,
    /// Bytes the record in progress still needs (0: none in progress).
    missing: usize,
    stats: RxStats,
}

impl Reassembler {
    /// What was counted so far.
    pub fn stats(&self) -> RxStats {
        self.stats
    }

    /// Takes one cell in and calls `out` with each datagram completed by it, in order.
    pub fn receive(&mut self, cell: &[u8], mut out: impl FnMut(Datagram<'_>)) {
        if cell.len() != CELL_SIZE || cell[0] != VERSION {
            self.stats.malformed += 1;
            return;
        }
        let seq = u32::from_be_bytes([cell[1], cell[2], cell[3], cell[4]]);
        let first = u16::from_be_bytes([cell[5], cell[6]]);
        let body = &cell[CELL_HEADER..];
        if first != NO_RECORD && usize::from(first) > body.len() {
            self.stats.malformed += 1;
            return;
        }
        self.stats.cells += 1;
        let in_order = self.next.is_none_or(|n| n == seq);
        if !in_order {
            // A gap (or a cell from the past): what was in progress is cut.
            let gap = self.next.map_or(0, |n| seq.wrapping_sub(n));
            self.stats.lost_cells += if gap < u32::MAX / 2 {
                u64::from(gap)
            } else {
                1
            };
            self.drop_partial();
        }
        self.next = Some(seq.wrapping_add(1));
        let start = if first == NO_RECORD {
            body.len()
        } else {
            usize::from(first)
        };
        let carried = start > 0 || body.iter().any(|&b| b != 0);
        if !carried {
            self.stats.cover_cells += 1;
        }
        // The continuation: exactly the bytes before the first record start.
        let continuation = &body[..start];
        if self.missing > 0 {
            let take = continuation.len().min(self.missing);
            self.partial.extend_from_slice(&continuation[..take]);
            self.missing -= take;
            if self.missing == 0 {
                // Where another record starts, this one must end exactly there; in a cell
                // where none starts, zeros follow it.
                if first != NO_RECORD && take != continuation.len() {
                    // The record ended before the next one starts: a sender that lies.
                    self.stats.malformed += 1;
                    self.partial.clear();
                    return;
                }
                if let Some(d) = parse_whole(&self.partial) {
                    self.stats.datagrams += 1;
                    out(d);
                }
                self.partial.clear();
            } else if first != NO_RECORD {
                // A record starts while this one still needs bytes: it was cut.
                self.stats.malformed += 1;
                self.drop_partial();
            }
        }
        // Otherwise continuation bytes of a record whose start we never saw (the first cell
        // of a link, or after a gap) are skipped.
        if first == NO_RECORD {
            return;
        }
        let mut at = start;
        while at < body.len() {
            let rest = &body[at..];
            match rest[0] {
                KIND_PADDING => break,
                KIND_DATAGRAM => {}
                _ => {
                    self.stats.malformed += 1;
                    return;
                }
            }
            if rest.len() < RECORD_HEADER {
                self.stats.malformed += 1;
                return;
            }
            let len = usize::from(u16::from_be_bytes([rest[7], rest[8]]));
            let whole = RECORD_HEADER + len;
            if whole <= rest.len() {
                if let Some(d) = parse_whole(&rest[..whole]) {
                    self.stats.datagrams += 1;
                    out(d);
                }
                at += whole;
            } else {
                // Goes on in the next cell.
                self.partial.clear();
                self.partial.extend_from_slice(rest);
                self.missing = whole - rest.len();
                return;
            }
        }
    }

    fn drop_partial(&mut self) {
        if self.missing > 0 {
            self.stats.cut_datagrams += 1;
        }
        self.partial.clear();
        self.missing = 0;
    }
}

/// A whole record (header and payload) as a datagram.
fn parse_whole(r: &[u8]) -> Option<Datagram<'_>> {
    if r.len() < RECORD_HEADER || r[0] != KIND_DATAGRAM {
        return None;
    }
    Some(Datagram {
        src: Endpoint {
            range: r[1],
            port: u16::from_be_bytes([r[2], r[3]]),
        },
        dst: Endpoint {
            range: r[4],
            port: u16::from_be_bytes([r[5], r[6]]),
        },
        payload: &r[RECORD_HEADER..],
    })
}
