#!/bin/sh
# apply
set -e
nft -f - <<'ORIGDST_EOF'
table inet origdst
delete table inet origdst
table inet origdst {
  chain output {
    type nat hook output priority -100; policy accept;
    meta l4proto != tcp return
    ip saddr 127.0.0.6/32 oifname "lo" return
    ip daddr != 127.0.0.0/8 oifname "lo" meta skuid 1337 meta l4proto tcp redirect to :15006
    ip daddr != 127.0.0.0/8 oifname "lo" meta mark 1337 meta l4proto tcp redirect to :15006
    ip6 saddr ::6/128 oifname "lo" return
    ip6 daddr != ::1/128 oifname "lo" meta skuid 1337 meta l4proto tcp redirect to :15006
    ip6 daddr != ::1/128 oifname "lo" meta mark 1337 meta l4proto tcp redirect to :15006
    oifname "lo" return
    meta mark 1337 return
    meta skuid 1337 return
    meta l4proto tcp redirect to :15001
  }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    iifname "lo" return
    meta l4proto != tcp return
    tcp dport { 15001, 15006, 15000, 15020, 15021, 15090 } return
    meta l4proto tcp redirect to :15006
  }
}
ORIGDST_EOF
while ip -4 rule del fwmark 1338 lookup 133 2>/dev/null; do :; done
ip -4 route flush table 133 2>/dev/null || true
while ip -6 rule del fwmark 1338 lookup 133 2>/dev/null; do :; done
ip -6 route flush table 133 2>/dev/null || true
ip -6 addr add ::6/128 dev lo 2>/dev/null || true

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
