// SPDX-License-Identifier: Apache-2.0
//
// veil's kernel fast path for relayed media (issue 24): an XDP program that moves the two kinds
// of datagram a call is made of, for the bindings the relay's core installed in its maps:
//
//   ChannelData from a client (UDP, IPv4, unpadded: its length field covers the rest of the
//   datagram exactly) -> a UDP datagram from the allocation's relayed address to the peer;
//   a UDP datagram from a permitted peer to a relayed address -> ChannelData to the client.
//
// The rewritten packet leaves by the interface it came in on (XDP_TX) with the Ethernet
// addresses swapped: the relay sits behind one router on that interface. Everything else --
// STUN and TURN control, Send and Data indications, padded or odd ChannelData, fragments, IP
// options, IPv6, bindings not in the maps -- is passed to the kernel's stack unchanged, where the
// relay's user-space path handles it. The core is the one authority: it installs a binding only
// after authenticating, filtering and binding it, with the instant it stops being valid, and
// removes it when it ends. The bandwidth caps hold here too: each allocation has a budget slot
// per direction, where the program counts what it carried (VEIL_USED, written only here) and the
// core sets how far it may go (VEIL_LIMIT, written only by the core, which reserved that much of
// the caps for the kernel); past the limit, datagrams go up to the core, which meters them one
// by one.
//
// Built with clang (-target bpf) by relay/build.rs when clang is found; a build without it has
// no fast path.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

// Every field in network byte order, as on the wire; the Rust side mirrors these layouts.

// A client's ChannelData: the client's address, the relay's listening address it reached, the
// channel number.
struct channel_key {
	__u32 client_ip;
	__u32 listen_ip;
	__u16 client_port;
	__u16 listen_port;
	__u16 channel;
	__u16 pad;
};

// Where it goes: from the relayed address to the peer, until `until` (CLOCK_MONOTONIC ns, the
// earliest of the channel's, the permission's and the allocation's expiry; past it the packet
// goes up to the core, which decides as it always does).
struct to_peer {
	__u32 relay_ip;
	__u32 peer_ip;
	__u16 relay_port;
	__u16 peer_port;
	// The allocation's budget slot (host order): VEIL_USED/VEIL_LIMIT[2 * slot].
	__u32 slot;
	__u64 until;
};

// A peer's datagram: the relayed address it reached and the peer's address.
struct peer_key {
	__u32 relay_ip;
	__u32 peer_ip;
	__u16 relay_port;
	__u16 peer_port;
};

// Where it goes: ChannelData on `channel` from the listening address to the client, until
// `until` as above. Installed only for flows whose client leg is not shaped.
struct to_client {
	__u32 listen_ip;
	__u32 client_ip;
	__u16 listen_port;
	__u16 client_port;
	__u16 channel;
	__u16 pad;
	// VEIL_USED/VEIL_LIMIT[2 * slot + 1] (host order).
	__u32 slot;
	__u32 pad2;
	__u64 until;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct channel_key);
	__type(value, struct to_peer);
} VEIL_TO_PEER SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct peer_key);
	__type(value, struct to_client);
} VEIL_TO_CLIENT SEC(".maps");

// Datagrams and payload bytes: carried so far (VEIL_USED) and allowed in all (VEIL_LIMIT), per
// allocation and direction; in VEIL_USED also how many of those datagrams did not look like
// media (an abuse signal, `media_like`; unused in VEIL_LIMIT).
struct budget {
	__u64 packets;
	__u64 bytes;
	__u64 other;
};

#define BUDGET_SLOTS 131072

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BUDGET_SLOTS);
	__type(key, __u32);
	__type(value, struct budget);
} VEIL_USED SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BUDGET_SLOTS);
	__type(key, __u32);
	__type(value, struct budget);
} VEIL_LIMIT SEC(".maps");

// Per CPU: datagrams sent to peers [0] and to clients [1], passed to the stack [2]; payload
// bytes sent to peers [3] and to clients [4].
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 5);
	__type(key, __u32);
	__type(value, __u64);
} VEIL_STATS SEC(".maps");

#define ETH_LEN 14
#define IP_LEN 20
#define UDP_LEN 8
#define HEADERS (ETH_LEN + IP_LEN + UDP_LEN)
#define CHANNEL_HEADER 4

static __always_inline void count(__u32 which, __u64 by)
{
	__u64 *n = bpf_map_lookup_elem(&VEIL_STATS, &which);
	if (n)
		*n += by;
}

// The budget counter of `slot` if `len` more payload bytes fit its limit, else NULL.
static __always_inline struct budget *within(__u32 slot, __u16 len)
{
	struct budget *used = bpf_map_lookup_elem(&VEIL_USED, &slot);
	struct budget *limit = bpf_map_lookup_elem(&VEIL_LIMIT, &slot);
	if (!used || !limit || used->packets >= limit->packets || used->bytes > limit->bytes ||
	    limit->bytes - used->bytes < len)
		return NULL;
	return used;
}

static __always_inline void spend(struct budget *used, __u16 len, int media)
{
	__sync_fetch_and_add(&used->packets, 1);
	__sync_fetch_and_add(&used->bytes, len);
	if (!media)
		__sync_fetch_and_add(&used->other, 1);
}

// Whether a payload of `len` bytes at `p` (ending at `end`) looks like media by RFC 7983's
// first bytes, exactly as the core's `media_like` (proto/src/server/watch.rs) judges what the
// user-space path relays: RTP/RTCP (128-191, 8 bytes at least), TURN ChannelData (64-79, its
// length matching), DTLS (20-63, 0xFE, 13 bytes at least), STUN (0-3, the magic cookie, 20 bytes
// at least), ZRTP (16-19, its magic). Every read is checked against `end` itself: `end` is
// hidden from the compiler, which would otherwise turn those checks into checks of `len` (it
// knows the two agree), which the verifier cannot follow.
static __always_inline int media_like(const unsigned char *p, __u32 len, const void *end)
{
	asm volatile("" : "+r"(end));
	if ((const void *)(p + 1) > end)
		return 0;
	__u8 b = p[0];
	if (b >= 128 && b <= 191)
		return len >= 8;
	if ((const void *)(p + 4) > end)
		return 0;
	if (b >= 64 && b <= 79) {
		__u32 n = (__u32)p[2] << 8 | p[3];
		return len >= 4 && n + 4 <= len && len - 4 - n < 4;
	}
	if (b >= 20 && b <= 63)
		return len >= 13 && p[1] == 0xfe;
	if ((const void *)(p + 8) > end)
		return 0;
	if (b <= 3)
		return len >= 20 && p[4] == 0x21 && p[5] == 0x12 && p[6] == 0xa4 && p[7] == 0x42;
	if (b >= 16 && b <= 19)
		return p[4] == 'Z' && p[5] == 'R' && p[6] == 'T' && p[7] == 'P';
	return 0;
}

static __always_inline __u16 ip_checksum(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < IP_LEN / 2; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

// What the new headers are made of, read before the packet's head moves.
struct out {
	unsigned char dst_mac[ETH_ALEN];
	unsigned char src_mac[ETH_ALEN];
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u16 id;
	__u8 tos;
};

// Writes Ethernet, IPv4 and UDP headers for `payload` bytes of UDP payload at the packet's
// start. The UDP checksum is left 0 (no checksum), which IPv4 allows.
static __always_inline int write_headers(struct xdp_md *ctx, const struct out *o, __u16 payload)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + HEADERS > end)
		return -1;
	struct ethhdr *eth = data;
	__builtin_memcpy(eth->h_dest, o->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, o->src_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	struct iphdr *ip = data + ETH_LEN;
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = o->tos;
	ip->tot_len = bpf_htons(IP_LEN + UDP_LEN + payload);
	ip->id = o->id;
	ip->frag_off = 0;
	ip->ttl = 64;
	ip->protocol = IPPROTO_UDP;
	ip->check = 0;
	ip->saddr = o->saddr;
	ip->daddr = o->daddr;
	ip->check = ip_checksum(ip);
	struct udphdr *udp = data + ETH_LEN + IP_LEN;
	udp->source = o->sport;
	udp->dest = o->dport;
	udp->len = bpf_htons(UDP_LEN + payload);
	udp->check = 0;
	return 0;
}

SEC("xdp")
int veil_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + HEADERS + CHANNEL_HEADER > end)
		goto pass;
	struct ethhdr *eth = data;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		goto pass;
	struct iphdr *ip = data + ETH_LEN;
	// No options, UDP, not a fragment (neither MF nor an offset).
	if (ip->version != 4 || ip->ihl != 5 || ip->protocol != IPPROTO_UDP ||
	    (ip->frag_off & bpf_htons(0x3fff)))
		goto pass;
	struct udphdr *udp = data + ETH_LEN + IP_LEN;
	__u16 udp_len = bpf_ntohs(udp->len);
	// The datagram exactly as long as its headers say (no trailer, nothing cut).
	if (udp_len < UDP_LEN || bpf_ntohs(ip->tot_len) != IP_LEN + udp_len ||
	    data + ETH_LEN + IP_LEN + udp_len != end)
		goto pass;
	__u16 payload = udp_len - UDP_LEN;
	unsigned char *p = data + HEADERS;

	struct out o;
	__builtin_memcpy(o.dst_mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(o.src_mac, eth->h_dest, ETH_ALEN);
	o.id = ip->id;
	o.tos = ip->tos;

	// A client's unpadded ChannelData on a bound channel: to the peer. Channels 0x4000-0x7fff:
	// RFC 8656 narrowed them to 0x4fff, but clients written to RFC 5766 (coturn's uclient)
	// still bind above, and the core accepts them; only installed channels match.
	if (p[0] >= 0x40 && p[0] <= 0x7f && payload >= CHANNEL_HEADER &&
	    ((__u16)p[2] << 8 | p[3]) == payload - CHANNEL_HEADER) {
		struct channel_key k = {
			.client_ip = ip->saddr,
			.listen_ip = ip->daddr,
			.client_port = udp->source,
			.listen_port = udp->dest,
			.channel = *(__u16 *)p,
			.pad = 0,
		};
		struct to_peer *v = bpf_map_lookup_elem(&VEIL_TO_PEER, &k);
		if (v && bpf_ktime_get_ns() < v->until) {
			__u16 media = payload - CHANNEL_HEADER;
			// Past its grant: the core meters it (and drops what exceeds the cap).
			struct budget *used = within(v->slot * 2, media);
			if (!used)
				goto pass;
			int looks = media_like(p + CHANNEL_HEADER, media, end);
			o.saddr = v->relay_ip;
			o.daddr = v->peer_ip;
			o.sport = v->relay_port;
			o.dport = v->peer_port;
			if (bpf_xdp_adjust_head(ctx, CHANNEL_HEADER))
				goto pass;
			if (write_headers(ctx, &o, media))
				return XDP_DROP;
			spend(used, media, looks);
			count(0, 1);
			count(3, media);
			return XDP_TX;
		}
	}

	// A permitted peer's datagram to a relayed address: ChannelData to the client.
	struct peer_key pk = {
		.relay_ip = ip->daddr,
		.peer_ip = ip->saddr,
		.relay_port = udp->dest,
		.peer_port = udp->source,
	};
	struct to_client *c = bpf_map_lookup_elem(&VEIL_TO_CLIENT, &pk);
	if (c && bpf_ktime_get_ns() < c->until &&
	    payload <= 0xffff - CHANNEL_HEADER - IP_LEN - UDP_LEN) {
		struct budget *used = within(c->slot * 2 + 1, payload);
		if (!used)
			goto pass;
		int looks = media_like(p, payload, end);
		o.saddr = c->listen_ip;
		o.daddr = c->client_ip;
		o.sport = c->listen_port;
		o.dport = c->client_port;
		__u16 channel = c->channel;
		if (bpf_xdp_adjust_head(ctx, -CHANNEL_HEADER))
			goto pass;
		if (write_headers(ctx, &o, payload + CHANNEL_HEADER))
			return XDP_DROP;
		data = (void *)(long)ctx->data;
		end = (void *)(long)ctx->data_end;
		if (data + HEADERS + CHANNEL_HEADER > end)
			return XDP_DROP;
		__u16 *h = data + HEADERS;
		h[0] = channel;
		h[1] = bpf_htons(payload);
		spend(used, payload, looks);
		count(1, 1);
		count(4, payload);
		return XDP_TX;
	}

pass:
	count(2, 1);
	return XDP_PASS;
}

// No GPL-only helper is used.
char LICENSE[] SEC("license") = "Apache-2.0";
