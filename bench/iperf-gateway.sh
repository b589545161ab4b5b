#!/usr/bin/env bash
# Single-stream iperf3 through a netns gateway, origdst (both data paths) beside HAProxy in the
# same run. Prints Gbit/s and whole-system CPU seconds per GiB (from /proc/stat) per candidate,
# median of REPS runs, candidates interleaved so drift hits all alike.
#
#   sudo bench/iperf-gateway.sh            # REPS=3 SECONDS_PER_RUN=5 by default
#
# Topology: client ns → router ns (REDIRECT :15001 on the client-facing veth) → server ns.
# "direct" is the same path with no proxy (the router only forwards): the physical limit.
# Needs: iproute2 iptables iperf3 haproxy (apt-get install -y iproute2 iptables iperf3 haproxy).
set -euo pipefail
REPS=${REPS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
cd "$(dirname "$0")/.."
cargo build --release -q -p origdst-runtime-uring
ORIGDST=${CARGO_TARGET_DIR:-target}/release/origdst
for tool in ip iptables iperf3 haproxy; do command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }; done

P="odb$$"; C="$P-c"; R="$P-r"; S="$P-s"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for ns in "$C" "$R" "$S"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

for ns in "$C" "$R" "$S"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add c0 netns "$C" type veth peer name rc netns "$R"
ip link add s0 netns "$S" type veth peer name rs netns "$R"
ip -n "$C" addr add 10.12.1.2/24 dev c0; ip -n "$C" link set c0 up
ip -n "$R" addr add 10.12.1.1/24 dev rc; ip -n "$R" link set rc up
ip -n "$R" addr add 10.12.2.1/24 dev rs; ip -n "$R" link set rs up
ip -n "$S" addr add 10.12.2.10/24 dev s0; ip -n "$S" link set s0 up
ip -n "$C" route add default via 10.12.1.1
ip -n "$S" route add default via 10.12.2.1
ip netns exec "$R" sysctl -qw net.ipv4.ip_forward=1

ip netns exec "$S" iperf3 -s -B 10.12.2.10 -D --pidfile "$WORK/iperf.pid"
sleep 0.3

redirect() { ip netns exec "$R" iptables -t nat "$1" PREROUTING -i rc -p tcp -j REDIRECT --to-ports 15001; }

haproxy_cfg() { # $1: splice options
  cat > "$WORK/haproxy.cfg" <<CFG
global
  nbthread 2
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
$1
frontend capture
  bind 0.0.0.0:15001
  default_backend original_destination
backend original_destination
  server s 0.0.0.0:0
CFG
}

start_proxy() { # $1: candidate
  case "$1" in
    direct) return ;;
    origdst-*) ip netns exec "$R" "$ORIGDST" run --shards 2 --data-path "${1#origdst-}" --log-level warn >"$WORK/proxy.log" 2>&1 & ;;
    haproxy-splice) haproxy_cfg "  option splice-request
  option splice-response"; ip netns exec "$R" haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/proxy.log" 2>&1 & ;;
    haproxy-splice-auto) haproxy_cfg "  option splice-auto"; ip netns exec "$R" haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/proxy.log" 2>&1 & ;;
    haproxy-nosplice) haproxy_cfg ""; ip netns exec "$R" haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/proxy.log" 2>&1 & ;;
  esac
  PROXY=$!
  PIDS+=("$PROXY")
  redirect -A
  for _ in $(seq 100); do ip netns exec "$R" bash -c "exec 3<>/dev/tcp/127.0.0.1/15001" 2>/dev/null && return; sleep 0.05; done
  echo "proxy $1 did not start:" >&2; cat "$WORK/proxy.log" >&2; exit 1
}

stop_proxy() { # $1: candidate
  [ "$1" = direct ] && return
  redirect -D
  kill "$PROXY"; wait "$PROXY" 2>/dev/null || true
}

cpu_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; } # user nice system irq softirq, in ticks

CANDIDATES=(direct origdst-uring-splice origdst-uring-copy haproxy-splice haproxy-splice-auto haproxy-nosplice)
TICK=$(getconf CLK_TCK)
for rep in $(seq "$REPS"); do
  for cand in "${CANDIDATES[@]}"; do
    start_proxy "$cand"
    before=$(cpu_busy)
    ip netns exec "$C" iperf3 -c 10.12.2.10 -t "$SECONDS_PER_RUN" -J > "$WORK/out.json"
    after=$(cpu_busy)
    stop_proxy "$cand"
    python3 - "$WORK/out.json" "$cand" "$((after - before))" "$TICK" >> "$WORK/results" <<'PY'
import json, sys
out = json.load(open(sys.argv[1]))
recv = out["end"]["sum_received"]
gib = recv["bytes"] / 2**30
cpu_s = int(sys.argv[3]) / int(sys.argv[4])
print(sys.argv[2], recv["bits_per_second"] / 1e9, cpu_s / gib)
PY
    echo "rep $rep $(tail -1 "$WORK/results")" >&2
  done
done

python3 - "$WORK/results" "$REPS" "$SECONDS_PER_RUN" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, gbps, cpu = line.split()
    rows[name].append((float(gbps), float(cpu)))
ref = statistics.median(g for g, _ in rows["haproxy-splice"])
direct = statistics.median(g for g, _ in rows["direct"])
ref_cpu = statistics.median(c for _, c in rows["haproxy-splice"])
print(f"\nsingle-stream iperf3, {sys.argv[3]} s per run, median of {sys.argv[2]} runs (gateway netns topology)")
print("| candidate | Gbit/s | × haproxy-splice | × direct | whole-system CPU s/GiB | CPU × haproxy-splice |")
print("|---|---|---|---|---|---|")
for name, values in rows.items():
    g = statistics.median(v[0] for v in values)
    c = statistics.median(v[1] for v in values)
    print(f"| {name} | {g:.2f} | {g/ref:.2f} | {g/direct:.2f} | {c:.3f} | {c/ref_cpu:.2f} |")
PY
