#!/bin/sh
# apply
set -e
nft -f - <<'ORIGDST_EOF'
table inet origdst
delete table inet origdst
table inet origdst {
  chain prerouting_node {
    type nat hook prerouting priority dstnat; policy accept;
    meta l4proto != tcp return
    iifname "vethlegacy" return
    ip saddr 10.244.1.9/32 return
    ip daddr 10.244.1.9/32 return
    iifname { "veth*", "cni0" } jump pod_out
    ip saddr 10.244.1.0/24 jump pod_out
    ip6 saddr fd00:10:244:1::/64 jump pod_out
    ip daddr 10.244.1.0/24 jump pod_in
    ip6 daddr fd00:10:244:1::/64 jump pod_in
  }
  chain pod_out {
    tcp dport 53 return
    meta l4proto tcp redirect to :15001
  }
  chain pod_in {
    tcp dport { 15001, 15006, 15000, 15020, 15021, 15090 } return
    meta l4proto tcp redirect to :15006
  }
}
ORIGDST_EOF
while ip -4 rule del fwmark 1338 lookup 133 2>/dev/null; do :; done
ip -4 route flush table 133 2>/dev/null || true
while ip -6 rule del fwmark 1338 lookup 133 2>/dev/null; do :; done
ip -6 route flush table 133 2>/dev/null || true

#!/bin/sh
# remove
set -e
nft -f - <<'ORIGDST_EOF'
table inet origdst
delete table inet origdst
ORIGDST_EOF
while ip -4 rule del fwmark 1338 lookup 133 2>/dev/null; do :; done
ip -4 route flush table 133 2>/dev/null || true
while ip -6 rule del fwmark 1338 lookup 133 2>/dev/null; do :; done
ip -6 route flush table 133 2>/dev/null || true
