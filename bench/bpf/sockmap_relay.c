// SPDX-License-Identifier: GPL-2.0
// The benchmark's in-kernel anchor: a TCP relay whose bytes never reach user space. Each socket of
// a relayed pair sits in `peers` under the *other* socket's cookie, so a socket's received bytes
// are redirected to the egress of the socket stored under its own cookie. User space
// (bench/src/sockmap.rs) only accepts, connects, fills the map and propagates FIN.
//
// Built at run time by the harness with Debian's clang: clang -O2 -g -target bpf -c.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32);
} peers SEC(".maps");

SEC("sk_skb/stream_verdict")
int relay(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);

	// SK_PASS when the peer is in the map (the bytes leave through it), else SK_DROP.
	return bpf_sk_redirect_hash(skb, &peers, &cookie, 0);
}

char LICENSE[] SEC("license") = "GPL";
