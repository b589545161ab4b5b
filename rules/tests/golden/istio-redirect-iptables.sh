#!/bin/sh
# apply
set -e
iptables-restore --noflush <<'ORIGDST_EOF'
*nat
:ORIGDST_OUTPUT - [0:0]
:ORIGDST_REDIRECT - [0:0]
:ORIGDST_INBOUND - [0:0]
:ORIGDST_IN_REDIRECT - [0:0]
-A ORIGDST_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ORIGDST_OUTPUT ! -d 127.0.0.0/8 -o lo -m owner --uid-owner 1337 -j ORIGDST_IN_REDIRECT
-A ORIGDST_OUTPUT ! -d 127.0.0.0/8 -o lo -m mark --mark 1337 -j ORIGDST_IN_REDIRECT
-A ORIGDST_OUTPUT -o lo -j RETURN
-A ORIGDST_OUTPUT -m mark --mark 1337 -j RETURN
-A ORIGDST_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ORIGDST_OUTPUT -j ORIGDST_REDIRECT
-A ORIGDST_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ORIGDST_INBOUND -i lo -j RETURN
-A ORIGDST_INBOUND -p tcp --dport 15001 -j RETURN
-A ORIGDST_INBOUND -p tcp --dport 15006 -j RETURN
-A ORIGDST_INBOUND -p tcp --dport 15000 -j RETURN
-A ORIGDST_INBOUND -p tcp --dport 15020 -j RETURN
-A ORIGDST_INBOUND -p tcp --dport 15021 -j RETURN
-A ORIGDST_INBOUND -p tcp --dport 15090 -j RETURN
-A ORIGDST_INBOUND -p tcp -j ORIGDST_IN_REDIRECT
-A ORIGDST_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
COMMIT
ORIGDST_EOF
iptables -t nat -C OUTPUT -p tcp -j ORIGDST_OUTPUT 2>/dev/null || iptables -t nat -A OUTPUT -p tcp -j ORIGDST_OUTPUT
iptables -t nat -C PREROUTING -p tcp -j ORIGDST_INBOUND 2>/dev/null || iptables -t nat -A PREROUTING -p tcp -j ORIGDST_INBOUND
while iptables -t mangle -D PREROUTING -p tcp -j ORIGDST_INBOUND 2>/dev/null; do :; done
while iptables -t nat -D PREROUTING -p tcp -j ORIGDST_NODE 2>/dev/null; do :; done
iptables -t nat -F ORIGDST_NODE 2>/dev/null || true
iptables -t nat -F ORIGDST_POD_OUT 2>/dev/null || true
iptables -t nat -F ORIGDST_POD_IN 2>/dev/null || true
iptables -t mangle -F ORIGDST_INBOUND 2>/dev/null || true
iptables -t mangle -F ORIGDST_DIVERT 2>/dev/null || true
iptables -t mangle -F ORIGDST_TPROXY 2>/dev/null || true
iptables -t nat -X ORIGDST_NODE 2>/dev/null || true
iptables -t nat -X ORIGDST_POD_OUT 2>/dev/null || true
iptables -t nat -X ORIGDST_POD_IN 2>/dev/null || true
iptables -t mangle -X ORIGDST_INBOUND 2>/dev/null || true
iptables -t mangle -X ORIGDST_DIVERT 2>/dev/null || true
iptables -t mangle -X ORIGDST_TPROXY 2>/dev/null || true
ip6tables-restore --noflush <<'ORIGDST_EOF'
*nat
:ORIGDST_OUTPUT - [0:0]
:ORIGDST_REDIRECT - [0:0]
:ORIGDST_INBOUND - [0:0]
:ORIGDST_IN_REDIRECT - [0:0]
-A ORIGDST_OUTPUT -s ::6/128 -o lo -j RETURN
-A ORIGDST_OUTPUT ! -d ::1/128 -o lo -m owner --uid-owner 1337 -j ORIGDST_IN_REDIRECT
-A ORIGDST_OUTPUT ! -d ::1/128 -o lo -m mark --mark 1337 -j ORIGDST_IN_REDIRECT
-A ORIGDST_OUTPUT -o lo -j RETURN
-A ORIGDST_OUTPUT -m mark --mark 1337 -j RETURN
-A ORIGDST_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ORIGDST_OUTPUT -j ORIGDST_REDIRECT
-A ORIGDST_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ORIGDST_INBOUND -i lo -j RETURN
-A ORIGDST_INBOUND -p tcp --dport 15001 -j RETURN
-A ORIGDST_INBOUND -p tcp --dport 15006 -j RETURN
-A ORIGDST_INBOUND -p tcp --dport 15000 -j RETURN
-A ORIGDST_INBOUND -p tcp --dport 15020 -j RETURN
-A ORIGDST_INBOUND -p tcp --dport 15021 -j RETURN
-A ORIGDST_INBOUND -p tcp --dport 15090 -j RETURN
-A ORIGDST_INBOUND -p tcp -j ORIGDST_IN_REDIRECT
-A ORIGDST_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
COMMIT
ORIGDST_EOF
ip6tables -t nat -C OUTPUT -p tcp -j ORIGDST_OUTPUT 2>/dev/null || ip6tables -t nat -A OUTPUT -p tcp -j ORIGDST_OUTPUT
ip6tables -t nat -C PREROUTING -p tcp -j ORIGDST_INBOUND 2>/dev/null || ip6tables -t nat -A PREROUTING -p tcp -j ORIGDST_INBOUND
while ip6tables -t mangle -D PREROUTING -p tcp -j ORIGDST_INBOUND 2>/dev/null; do :; done
while ip6tables -t nat -D PREROUTING -p tcp -j ORIGDST_NODE 2>/dev/null; do :; done
ip6tables -t nat -F ORIGDST_NODE 2>/dev/null || true
ip6tables -t nat -F ORIGDST_POD_OUT 2>/dev/null || true
ip6tables -t nat -F ORIGDST_POD_IN 2>/dev/null || true
ip6tables -t mangle -F ORIGDST_INBOUND 2>/dev/null || true
ip6tables -t mangle -F ORIGDST_DIVERT 2>/dev/null || true
ip6tables -t mangle -F ORIGDST_TPROXY 2>/dev/null || true
ip6tables -t nat -X ORIGDST_NODE 2>/dev/null || true
ip6tables -t nat -X ORIGDST_POD_OUT 2>/dev/null || true
ip6tables -t nat -X ORIGDST_POD_IN 2>/dev/null || true
ip6tables -t mangle -X ORIGDST_INBOUND 2>/dev/null || true
ip6tables -t mangle -X ORIGDST_DIVERT 2>/dev/null || true
ip6tables -t mangle -X ORIGDST_TPROXY 2>/dev/null || true
while ip -4 rule del fwmark 1338 lookup 133 2>/dev/null; do :; done
ip -4 route flush table 133 2>/dev/null || true
while ip -6 rule del fwmark 1338 lookup 133 2>/dev/null; do :; done
ip -6 route flush table 133 2>/dev/null || true
ip -6 addr add ::6/128 dev lo 2>/dev/null || true

#!/bin/sh
# remove
set -e
while iptables -t nat -D OUTPUT -p tcp -j ORIGDST_OUTPUT 2>/dev/null; do :; done
while iptables -t nat -D PREROUTING -p tcp -j ORIGDST_INBOUND 2>/dev/null; do :; done
while iptables -t mangle -D PREROUTING -p tcp -j ORIGDST_INBOUND 2>/dev/null; do :; done
while iptables -t nat -D PREROUTING -p tcp -j ORIGDST_NODE 2>/dev/null; do :; done
iptables -t nat -F ORIGDST_NODE 2>/dev/null || true
iptables -t nat -F ORIGDST_POD_OUT 2>/dev/null || true
iptables -t nat -F ORIGDST_POD_IN 2>/dev/null || true
iptables -t nat -F ORIGDST_OUTPUT 2>/dev/null || true
iptables -t nat -F ORIGDST_REDIRECT 2>/dev/null || true
iptables -t nat -F ORIGDST_INBOUND 2>/dev/null || true
iptables -t nat -F ORIGDST_IN_REDIRECT 2>/dev/null || true
iptables -t mangle -F ORIGDST_INBOUND 2>/dev/null || true
iptables -t mangle -F ORIGDST_DIVERT 2>/dev/null || true
iptables -t mangle -F ORIGDST_TPROXY 2>/dev/null || true
iptables -t nat -X ORIGDST_NODE 2>/dev/null || true
iptables -t nat -X ORIGDST_POD_OUT 2>/dev/null || true
iptables -t nat -X ORIGDST_POD_IN 2>/dev/null || true
iptables -t nat -X ORIGDST_OUTPUT 2>/dev/null || true
iptables -t nat -X ORIGDST_REDIRECT 2>/dev/null || true
iptables -t nat -X ORIGDST_INBOUND 2>/dev/null || true
iptables -t nat -X ORIGDST_IN_REDIRECT 2>/dev/null || true
iptables -t mangle -X ORIGDST_INBOUND 2>/dev/null || true
iptables -t mangle -X ORIGDST_DIVERT 2>/dev/null || true
iptables -t mangle -X ORIGDST_TPROXY 2>/dev/null || true
while ip6tables -t nat -D OUTPUT -p tcp -j ORIGDST_OUTPUT 2>/dev/null; do :; done
while ip6tables -t nat -D PREROUTING -p tcp -j ORIGDST_INBOUND 2>/dev/null; do :; done
while ip6tables -t mangle -D PREROUTING -p tcp -j ORIGDST_INBOUND 2>/dev/null; do :; done
while ip6tables -t nat -D PREROUTING -p tcp -j ORIGDST_NODE 2>/dev/null; do :; done
ip6tables -t nat -F ORIGDST_NODE 2>/dev/null || true
ip6tables -t nat -F ORIGDST_POD_OUT 2>/dev/null || true
ip6tables -t nat -F ORIGDST_POD_IN 2>/dev/null || true
ip6tables -t nat -F ORIGDST_OUTPUT 2>/dev/null || true
ip6tables -t nat -F ORIGDST_REDIRECT 2>/dev/null || true
ip6tables -t nat -F ORIGDST_INBOUND 2>/dev/null || true
ip6tables -t nat -F ORIGDST_IN_REDIRECT 2>/dev/null || true
ip6tables -t mangle -F ORIGDST_INBOUND 2>/dev/null || true
ip6tables -t mangle -F ORIGDST_DIVERT 2>/dev/null || true
ip6tables -t mangle -F ORIGDST_TPROXY 2>/dev/null || true
ip6tables -t nat -X ORIGDST_NODE 2>/dev/null || true
ip6tables -t nat -X ORIGDST_POD_OUT 2>/dev/null || true
ip6tables -t nat -X ORIGDST_POD_IN 2>/dev/null || true
ip6tables -t nat -X ORIGDST_OUTPUT 2>/dev/null || true
ip6tables -t nat -X ORIGDST_REDIRECT 2>/dev/null || true
ip6tables -t nat -X ORIGDST_INBOUND 2>/dev/null || true
ip6tables -t nat -X ORIGDST_IN_REDIRECT 2>/dev/null || true
ip6tables -t mangle -X ORIGDST_INBOUND 2>/dev/null || true
ip6tables -t mangle -X ORIGDST_DIVERT 2>/dev/null || true
ip6tables -t mangle -X ORIGDST_TPROXY 2>/dev/null || true
while ip -4 rule del fwmark 1338 lookup 133 2>/dev/null; do :; done
ip -4 route flush table 133 2>/dev/null || true
while ip -6 rule del fwmark 1338 lookup 133 2>/dev/null; do :; done
ip -6 route flush table 133 2>/dev/null || true
