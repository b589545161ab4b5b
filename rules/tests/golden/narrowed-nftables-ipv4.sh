#!/bin/sh
# apply
set -e
nft -f - <<'ORIGDST_EOF'
table inet origdst
delete table inet origdst
table inet origdst {
  chain output {
    type nat hook output priority -100; policy accept;
    meta nfproto != ipv4 return
    meta l4proto != tcp return
    ip saddr 127.0.0.6/32 oifname "lo" return
    ip daddr != 127.0.0.0/8 oifname "lo" meta skuid { 1337, 1338 } meta l4proto tcp redirect to :15006
    ip daddr != 127.0.0.0/8 oifname "lo" meta mark 1337 meta l4proto tcp redirect to :15006
    oifname "lo" return
    meta mark 1337 return
    meta skuid { 1337, 1338 } return
    tcp dport { 53, 5432 } return
    ip daddr 10.96.0.10/32 return
    ip daddr 10.0.0.0/8 meta l4proto tcp redirect to :15001
  }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    meta nfproto != ipv4 return
    iifname "lo" return
    meta l4proto != tcp return
    tcp dport { 15001, 15006, 22 } return
    tcp dport { 8080, 9090 } meta l4proto tcp redirect to :15006
  }
}
ORIGDST_EOF
while ip -4 rule del fwmark 1338 lookup 133 2>/dev/null; do :; done
ip -4 route flush table 133 2>/dev/null || true

#!/bin/sh
# remove
set -e
nft -f - <<'ORIGDST_EOF'
table inet origdst
delete table inet origdst
ORIGDST_EOF
while ip -4 rule del fwmark 1338 lookup 133 2>/dev/null; do :; done
ip -4 route flush table 133 2>/dev/null || true
