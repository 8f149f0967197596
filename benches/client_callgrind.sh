#!/bin/bash
# User-space instructions of sockrelay-origin + sockrelay-dest per byte of
# bulk transfer through the full chain, counted by callgrind (repeatable
# under load, unlike MB/s). The relay runs natively.
#
#   benches/client_callgrind.sh BINDIR [up|down] [plain|e2e]
#
# BINDIR holds sockrelay-relay, -origin and -dest (e.g. target/release after
# `cargo bench --bench chain --no-run`). Defaults: both directions, both
# modes. Needs valgrind (callgrind_control) and python3. Counters are zeroed
# after a first round trip and dumped when 64 MiB have gone through.
set -u
BIN=$(cd "$1" && pwd); shift
MODES=${1:-up down}; KINDS=${2:-plain e2e}
W=${KEEP_DIR:-$(mktemp -d)}; [ -z "${KEEP_DIR:-}" ] && trap 'rm -rf "$W"' EXIT
export SOCKRELAY_TOKEN=client-callgrind-token-0123456789abcdef
cat >"$W/server.py" <<'PY'
import socket, sys, os
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(16)
N = 64 << 20
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
import socket, sys
c = socket.socket(socket.AF_UNIX); c.connect(sys.argv[1]); mode = sys.argv[2]
N = 64 << 20
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
PY
for KIND in $KINDS; do for MODE in $MODES; do
  D=$W/$KIND-$MODE; mkdir -p "$D"
  EXTRA=; [ "$KIND" = plain ] && EXTRA=--insecure-plaintext
  "$BIN/sockrelay-relay" -p 0 -b 127.0.0.1 -q 2>/dev/null & RELAY=$!
  sleep 0.5
  PORT=$(ss -ltnp | grep "pid=$RELAY," | grep -o '127.0.0.1:[0-9]*' | head -1 | cut -d: -f2)
  python3 "$W/server.py" "$D/srv.sock" & SRV=$!
  sleep 0.3
  valgrind --tool=callgrind --compress-strings=no --compress-pos=no --callgrind-out-file="$D/origin.out" "$BIN/sockrelay-origin" $EXTRA -q 127.0.0.1 "$PORT" "$D/srv.sock" >"$D/origin.stdout" 2>/dev/null & ORIGIN=$!
  for _ in $(seq 100); do [ -s "$D/origin.stdout" ] && break; sleep 0.2; done
  SESSION=$(head -1 "$D/origin.stdout" | sed 's/^SOCKRELAY_SESSION=//; s/;.*//')
  valgrind --tool=callgrind --compress-strings=no --compress-pos=no --callgrind-out-file="$D/dest.out" "$BIN/sockrelay-dest" $EXTRA -q 127.0.0.1 "$PORT" "$SESSION" "$D/dest.sock" 2>/dev/null & DEST=$!
  for _ in $(seq 200); do [ -S "$D/dest.sock" ] && break; sleep 0.2; done
  sleep 2
  python3 "$W/client.py" "$D/dest.sock" ping
  callgrind_control -z $ORIGIN >/dev/null 2>&1; callgrind_control -z $DEST >/dev/null 2>&1
  python3 "$W/client.py" "$D/dest.sock" "$MODE" || echo "$KIND $MODE: transfer failed"
  callgrind_control -d $ORIGIN >/dev/null 2>&1; callgrind_control -d $DEST >/dev/null 2>&1
  sleep 0.5
  kill $ORIGIN $DEST $RELAY $SRV 2>/dev/null; wait 2>/dev/null
  oi=$(grep -m1 '^summary:' "$D/origin.out.1" | awk '{print $2}')
  di=$(grep -m1 '^summary:' "$D/dest.out.1" | awk '{print $2}')
  echo "$KIND $MODE: origin $oi dest $di instructions; $(python3 -c "print(round(($oi + $di) / (64 << 20), 3))") per byte"
done; done
