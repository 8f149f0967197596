#!/bin/bash
# Per-process kernel-side counts of a bulk transfer through the full chain
# (unix client -> dest -> relay -> origin -> unix server), for one or more
# builds in one run, alternating, so that each is measured under the same
# load: syscalls, context switches and CPU time per MB for the relay, the
# origin and the dest, plus throughput, counted by `perf stat` (software
# events and the raw_syscalls tracepoint; no hardware counters needed).
#
#   benches/chain_counts.sh [-r ROUNDS] [-m MiB] [-k plain|e2e] [-d up|down] DIR [DIR ...]
#
# Each DIR holds sockrelay-relay, -origin and -dest (e.g. target/release
# after `cargo bench --bench chain --no-run`, and an older build copied
# aside). Defaults: 3 rounds, 256 MiB, plaintext, up (client -> server).
# Prints the median of the rounds for each DIR, and its ratio to the first.
# Needs perf (linux-perf) and python3; talks only to 127.0.0.1 and unix
# sockets in a temporary directory; every transfer is bounded (timeout).
set -u
ROUNDS=3; MIB=256; KIND=plain; MODE=up
while getopts r:m:k:d: o; do case $o in
  r) ROUNDS=$OPTARG;; m) MIB=$OPTARG;; k) KIND=$OPTARG;; d) MODE=$OPTARG;;
  *) echo "usage: $0 [-r ROUNDS] [-m MiB] [-k plain|e2e] [-d up|down] DIR [DIR ...]" >&2; exit 2;;
esac; done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-r ROUNDS] [-m MiB] [-k plain|e2e] [-d up|down] DIR [DIR ...]" >&2; exit 2; }
command -v perf >/dev/null || { echo "$0: needs perf" >&2; exit 2; }
W=$(mktemp -d); trap 'rm -rf "$W"; kill $(jobs -p) 2>/dev/null' EXIT
export SOCKRELAY_TOKEN=chain-counts-token-0123456789abcdef
cat >"$W/server.py" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(16)
N = int(sys.argv[2]) << 20
while True:
    c, _ = s.accept()
    first = c.recv(1)
    if first == b'P':
        c.sendall(b'P')
    elif first == b'U':
        got = 0
        while got < N:
            b = c.recv(1 << 20)
            if not b: break
            got += len(b)
        c.sendall(b'K')
    elif first == b'D':
        buf = b'x' * (1 << 20)
        for _ in range(N >> 20): c.sendall(buf)
    c.close()
PY
cat >"$W/client.py" <<'PY'
import socket, sys, time
c = socket.socket(socket.AF_UNIX); c.connect(sys.argv[1]); mode = sys.argv[2]
N = int(sys.argv[3]) << 20
t0 = time.monotonic()
if mode == 'ping':
    c.sendall(b'P'); assert c.recv(1) == b'P'
elif mode == 'up':
    c.sendall(b'U'); buf = b'y' * (1 << 20)
    for _ in range(N >> 20): c.sendall(buf)
    assert c.recv(1) == b'K'
else:
    c.sendall(b'D'); got = 0
    while got < N:
        b = c.recv(1 << 20)
        if not b: break
        got += len(b)
    assert got == N, got
print(N / (time.monotonic() - t0) / 1e6)
PY
EXTRA=; [ "$KIND" = plain ] && EXTRA=--insecure-plaintext
MB=$(python3 -c "print($MIB * 1.048576)")

one() {  # one() DIR TAG: one transfer, appends "tag mbps relay... origin... dest..." to $W/results
  local BIN=$1 TAG=$2 D; D=$(mktemp -d -p "$W")
  "$BIN/sockrelay-relay" -p 0 -b 127.0.0.1 -q 2>/dev/null & local RELAY=$!
  local PORT=
  for _ in $(seq 50); do
    PORT=$(ss -ltnp 2>/dev/null | grep "pid=$RELAY," | grep -o '127.0.0.1:[0-9]*' | head -1 | cut -d: -f2)
    [ -n "$PORT" ] && break; sleep 0.1
  done
  python3 "$W/server.py" "$D/srv.sock" "$MIB" & local SRV=$!
  for _ in $(seq 50); do [ -S "$D/srv.sock" ] && break; sleep 0.1; done
  "$BIN/sockrelay-origin" $EXTRA -q 127.0.0.1 "$PORT" "$D/srv.sock" >"$D/origin.out" 2>/dev/null & local ORIGIN=$!
  for _ in $(seq 100); do [ -s "$D/origin.out" ] && break; sleep 0.1; done
  local SESSION; SESSION=$(head -1 "$D/origin.out" | sed 's/^SOCKRELAY_SESSION=//; s/;.*//')
  "$BIN/sockrelay-dest" $EXTRA -q 127.0.0.1 "$PORT" "$SESSION" "$D/dest.sock" 2>/dev/null & local DEST=$!
  for _ in $(seq 100); do [ -S "$D/dest.sock" ] && break; sleep 0.1; done
  timeout 10 python3 "$W/client.py" "$D/dest.sock" ping "$MIB" >/dev/null
  local P PIDS=""
  for P in relay:$RELAY origin:$ORIGIN dest:$DEST; do
    perf stat -x, -e raw_syscalls:sys_enter,cs,task-clock -p "${P#*:}" -o "$D/${P%:*}.stat" &
    PIDS="$PIDS $!"
  done
  sleep 0.3
  local RATE; RATE=$(timeout 120 python3 "$W/client.py" "$D/dest.sock" "$MODE" "$MIB")
  kill -INT $PIDS 2>/dev/null; wait $PIDS 2>/dev/null
  local LINE="$TAG ${RATE:-nan}"
  for P in relay origin dest; do
    LINE="$LINE $(awk -F, -v mb="$MB" '/sys_enter/{s=$1} /,cs,/{c=$1} /task-clock/{t=$1}
      END{printf "%.1f %.1f %.0f", s/mb, c/mb, t*1000/mb}' "$D/$P.stat")"
  done
  echo "$LINE" >>"$W/results"
  kill $ORIGIN $DEST $RELAY $SRV 2>/dev/null; wait $ORIGIN $DEST $RELAY $SRV 2>/dev/null
}

for r in $(seq "$ROUNDS"); do
  i=0; for DIR in "$@"; do i=$((i + 1)); one "$(cd "$DIR" && pwd)" "$i"; done
done
echo "chain counts: $KIND $MODE, $MIB MiB, medians of $ROUNDS; per MB: syscalls, context switches, CPU µs"
python3 - "$W/results" "$@" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
dirs = sys.argv[2:]
cols = ["MB/s", "relay sys", "relay cs", "relay cpu", "origin sys", "origin cs", "origin cpu", "dest sys", "dest cs", "dest cpu"]
med = {}
for i, d in enumerate(dirs, 1):
    vals = [[float(x) for x in r[1:]] for r in rows if r[0] == str(i)]
    med[i] = [st.median(c) for c in zip(*vals)] if vals else [float('nan')] * len(cols)
print("| build | " + " | ".join(cols) + " |")
print("|---" * (len(cols) + 1) + "|")
for i, d in enumerate(dirs, 1):
    print(f"| {d} | " + " | ".join(f"{v:.0f}" if v >= 100 else f"{v:.1f}" for v in med[i]) + " |")
if len(dirs) > 1:
    for i, d in enumerate(dirs[1:], 2):
        r = [a / b if b else float('nan') for a, b in zip(med[i], med[1])]
        print(f"| {d} / {dirs[0]} | " + " | ".join(f"{v:.2f}" for v in r) + " |")
PY
