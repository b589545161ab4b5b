// SPDX-License-Identifier: GPL-2.0
// origdst's in-kernel relay (data_path: kernel-sockmap). Each socket of a relayed pair sits in
// `peers` under the *other* socket's cookie, so what a socket receives is redirected to the
// egress of the socket stored under its own cookie, and never reaches user space.
//
// A socket's bytes that arrive before its peer is in the map (the pair is inserted one socket at
// a time) are passed to the socket itself rather than dropped, and the socket is marked in
// `spilled`: from then on all its bytes are passed, so the shard, which copies them, sees them in
// order. The shard deletes the mark when the connection closes. (If `spilled` were ever full,
// the mark could not be set and a later byte could overtake a passed one: it holds as many
// entries as `peers`, and a mark only lives as long as its connection.)
//
// Built by runtime-uring/build.rs: clang -O2 -g -target bpf -c.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

// Two entries per relayed connection; a pair that does not fit is relayed by the shard.
#define ENTRIES_MAX 131072

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, ENTRIES_MAX);
	__type(key, __u64);
	__type(value, __u32);
} peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ENTRIES_MAX);
	__type(key, __u64);
	__type(value, __u8);
} spilled SEC(".maps");

SEC("sk_skb/stream_verdict")
int relay(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	__u8 one = 1;

	// A bare FIN reaches the verdict as an empty skb (TCP has already taken the FIN: the shard
	// sees it as POLLRDHUP). Redirected, the peer's send work queue would take its zero-length
	// send for a broken pipe and fail the socket with EPIPE; there is nothing in it to keep.
	if (skb->len == 0)
		return SK_DROP;
	if (bpf_map_lookup_elem(&spilled, &cookie))
		return SK_PASS;
	if (bpf_sk_redirect_hash(skb, &peers, &cookie, 0) == SK_PASS)
		return SK_PASS;
	// No peer yet: keep the bytes on this socket, and every later one after them.
	bpf_map_update_elem(&spilled, &cookie, &one, BPF_ANY);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
