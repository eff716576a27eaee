//! Where everything a client or a peer sends arrives, and the relay path: what a client sends to
//! peers (ChannelData, Send indications) and what peers send back (framed in place as
//! ChannelData or Data indications). Requests go on to the request dispatch; nothing on the
//! relay path allocates.

use std::net::SocketAddr;
use std::ops::Range;

use super::allocation::{TO_CLIENT, TO_PEER};
use super::{
    Action, ClientKey, Delivery, Env, HEADROOM, Now, RelayId, SendIndication, Server, TAILROOM,
};
use crate::stun::{self, Class, Message, Writer, attr, channel_data, method};

impl Server {
    /// Handles one message from a client (a datagram, or one frame of a stream). `out`
    /// receives a reply (at least 1500 bytes).
    pub fn handle_client(
        &mut self,
        now: Now,
        from: ClientKey,
        pkt: &[u8],
        out: &mut [u8],
        env: &mut impl Env,
    ) -> Action {
        self.sync_live();
        let action = match pkt.first().map(|b| b >> 6) {
            Some(1) => self.client_channel_data(now, from, pkt),
            Some(0) => match Message::decode(pkt) {
                Ok(m) => match m.class {
                    Class::Request => match self.request(now, from, &m, out, env) {
                        Some(n) => Action::Reply(n),
                        None => Action::None,
                    },
                    Class::Indication if m.method == method::SEND => {
                        self.send_indication(now, from, &m)
                    }
                    _ => Action::None,
                },
                Err(_) => {
                    self.stats.malformed += 1;
                    Action::None
                }
            },
            _ => {
                self.stats.malformed += 1;
                Action::None
            }
        };
        if let Action::Forward {
            relay, ref data, ..
        } = action
            && let Some(payload) = pkt.get(data.clone())
        {
            self.watch_payload(relay.slot(), TO_PEER, payload);
        }
        action
    }

    fn client_channel_data(&mut self, now: Now, from: ClientKey, pkt: &[u8]) -> Action {
        let Some((number, payload)) = channel_data::decode(pkt) else {
            self.stats.malformed += 1;
            return Action::None;
        };
        let Some(&slot) = self.by_client.get(&from) else {
            return Action::None;
        };
        let a = &self.allocs[slot];
        let Some(peer) = a.channels.peer_of(number, now.mono) else {
            return Action::None;
        };
        if !a.perms.permits(peer.ip(), now.mono) {
            return Action::None;
        }
        let Some(relay) = a.relay_for(&peer) else {
            return Action::None;
        };
        if !self.meter(slot, TO_PEER, now.mono, payload.len()) {
            return Action::None;
        }
        Action::Forward {
            relay,
            peer,
            data: 4..4 + payload.len(),
        }
    }

    fn send_indication(&mut self, now: Now, from: ClientKey, m: &Message) -> Action {
        let Some(&slot) = self.by_client.get(&from) else {
            return Action::None;
        };
        let Some(SendIndication { peer, data }) = SendIndication::parse(m) else {
            return Action::None;
        };
        let a = &self.allocs[slot];
        if !a.perms.permits(peer.ip(), now.mono) {
            return Action::None;
        }
        // The permission is per IP; the port is the client's choice per packet, and must not
        // be one of the node's own (its listeners, its host's other services).
        if !self.live.filter.admits(peer) {
            self.stats.peer_sends_denied += 1;
            return Action::None;
        }
        let Some(relay) = a.relay_for(&peer) else {
            return Action::None;
        };
        if !self.meter(slot, TO_PEER, now.mono, data.len()) {
            return Action::None;
        }
        Action::Forward { relay, peer, data }
    }

    /// Handles a datagram a peer sent to a relayed address. The payload sits at
    /// `buf[payload]`, with [`HEADROOM`] bytes before it and [`TAILROOM`] after; the framed
    /// message for the client is written in place. Returns where to send what.
    pub fn handle_peer(
        &mut self,
        now: Now,
        relay: RelayId,
        peer: SocketAddr,
        buf: &mut [u8],
        payload: Range<usize>,
    ) -> Option<Delivery> {
        self.sync_live();
        let a = self.allocs.get(relay.slot())?;
        if a.generation != relay.generation() || !a.perms.permits(peer.ip(), now.mono) {
            return None;
        }
        let len = payload.len();
        if !self.meter(relay.slot(), TO_CLIENT, now.mono, len) {
            return None;
        }
        self.watch_payload(relay.slot(), TO_CLIENT, buf.get(payload.clone())?);
        let a = &self.allocs[relay.slot()];
        if len > u16::MAX as usize - 64
            || payload.start < HEADROOM
            || payload.end + TAILROOM > buf.len()
        {
            return None;
        }
        if let Some(number) = a.channels.number_of(&peer, now.mono) {
            let start = payload.start - 4;
            let hdr: &mut [u8; 4] = (&mut buf[start..payload.start]).try_into().ok()?;
            channel_data::write_header(hdr, number, len as u16);
            // Over a stream the next frame starts on a 4-byte boundary (RFC 8656 §12.5).
            let end = if a.client.transport.is_stream() {
                let end = start + ((4 + len + 3) & !3);
                buf[payload.end..end].fill(0);
                end
            } else {
                payload.end
            };
            return Some(Delivery {
                client: a.client,
                frame: start..end,
                profile: a.profile,
            });
        }
        let (client, profile) = (a.client, a.profile);
        let addr_len = if peer.is_ipv4() { 8 } else { 20 };
        let start = payload.start - (stun::HEADER_LEN + 4 + addr_len + 4);
        let txid = self.txids.next_txid();
        // The headroom and tailroom were checked above: the writes below cannot overflow.
        let mut w = Writer::new(
            &mut buf[start..payload.end + TAILROOM],
            method::DATA,
            Class::Indication,
            &txid,
        )
        .ok()?;
        w.xor_address(attr::XOR_PEER_ADDRESS, peer).ok()?;
        // The value is already in place: attr_slot only writes the header and the padding.
        w.attr_slot(attr::DATA, len).ok()?;
        let n = w.finish();
        Some(Delivery {
            client,
            frame: start..start + n,
            profile,
        })
    }
}
