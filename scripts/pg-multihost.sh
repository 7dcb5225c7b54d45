#!/usr/bin/env bash
# Multi-host test of the PostgreSQL store, on one machine with network namespaces (root only):
#
#   gt-db  10.77.0.1   PostgreSQL (a throwaway cluster on the namespace's address)
#   gt-d1  10.77.0.2   gym-telemetry-daemon serve --store … (one token file for both daemons)
#   gt-d2  10.77.0.3   gym-telemetry-daemon serve --store …
#   gt-w1..gt-w3  10.77.0.4-6   gym-telemetry-demo worker, GYM_TELEMETRY_ENDPOINT=d1,d2 (w2: d2,d1)
#
# joined by veth pairs to one bridge (no address in the root namespace: nothing leaves these
# namespaces). Daemon d1 is SIGKILLed while the workers run; its workers fail over to d2.
# Then the store must hold exactly what the workers produced: every step and episode once.
# Prints `multihost: steps=… episodes=… stored_steps=… stored_episodes=… lost=0 duplicated=0`.
#
# Usage: scripts/pg-multihost.sh DAEMON_BIN DEMO_BIN
set -euo pipefail
cd "$(dirname "$0")/.."
DAEMON="$1"
DEMO="$2"
NET=10.77.0
BR=gtbr0
HOSTS=(db d1 d2 w1 w2 w3)
WORK="$(mktemp -d /tmp/gym-multihost.XXXXXX)"
chmod 0711 "$WORK"
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PG_TEST_DIR="$WORK/pg" PG_TEST_PORT=5432 ip netns exec gt-db scripts/pg-test-cluster.sh stop \
        >/dev/null 2>&1 || true
    for h in "${HOSTS[@]}"; do ip netns del "gt-$h" 2>/dev/null || true; done
    ip link del "$BR" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

ip link add "$BR" type bridge
ip link set "$BR" up
i=1
for h in "${HOSTS[@]}"; do
    ip netns add "gt-$h"
    ip link add "gt-$h-v" type veth peer name eth0 netns "gt-$h"
    ip link set "gt-$h-v" master "$BR" up
    ip -n "gt-$h" addr add "$NET.$i/24" dev eth0
    ip -n "gt-$h" link set eth0 up
    ip -n "gt-$h" link set lo up
    i=$((i + 1))
done

# The database host.
mkdir -p "$WORK/pg"
URL="$(PG_TEST_DIR="$WORK/pg" PG_TEST_PORT=5432 PG_TEST_LISTEN="$NET.1" PG_TEST_HBA_NET="$NET.0/24" \
    ip netns exec gt-db scripts/pg-test-cluster.sh start)"
(umask 077; echo "$URL?schema=multihost" >"$WORK/store-url"; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/token")

# Two daemon hosts.
for d in 1 2; do
    ip netns exec "gt-d$d" "$DAEMON" serve --var-dir "$WORK/var-d$d" \
        --store-url-file "$WORK/store-url" --auth-token-file "$WORK/token" \
        --listen "$NET.$((d + 1)):50151" --metrics-listen off \
        >"$WORK/d$d.out" 2>"$WORK/d$d.err" &
    PIDS+=($!)
    for _ in $(seq 100); do
        grep -q "listening on" "$WORK/d$d.out" 2>/dev/null && break
        sleep 0.1
    done
    grep -q "listening on" "$WORK/d$d.out" || { cat "$WORK/d$d.err" >&2; exit 1; }
done
D1_PID="${PIDS[0]}"

# Three worker hosts, each a run of two agents.
TOKEN="$(cat "$WORK/token")"
W_PIDS=()
for w in 1 2 3; do
    if [[ $w == 2 ]]; then EP="http://$NET.3:50151,http://$NET.2:50151"; else EP="http://$NET.2:50151,http://$NET.3:50151"; fi
    GYM_TELEMETRY_ENDPOINT="$EP" GYM_TELEMETRY_AUTH_TOKEN="$TOKEN" \
        GYM_TELEMETRY_QUEUE_DIR="$WORK/queue-w$w" \
        ip netns exec "gt-w$w" "$DEMO" worker --run-id "multihost-w$w" --episodes 30 \
        --agents 2 --step-delay-ms 1 --seed "$w" >/dev/null 2>"$WORK/w$w.err" &
    W_PIDS+=($!)
    PIDS+=($!)
done
# d1 dies while the workers run (their shims move to d2 and resend from their last ack).
sleep 1
kill -KILL "$D1_PID"
wait "$D1_PID" 2>/dev/null || true
for p in "${W_PIDS[@]}"; do wait "$p"; done

steps=0
episodes=0
for w in 1 2 3; do
    line="$(grep "demo worker done" "$WORK/w$w.err")"
    s="$(sed -E 's/.*steps: ([0-9]+).*/\1/' <<<"$line")"
    e="$(sed -E 's/.*episodes: ([0-9]+).*/\1/' <<<"$line")"
    steps=$((steps + s))
    episodes=$((episodes + e))
done
stored_steps=0
stored_episodes=0
dup=0
for w in 1 2 3; do
    ip netns exec gt-d2 "$DAEMON" dump --store-url-file "$WORK/store-url" --run "multihost-w$w" \
        >"$WORK/steps-w$w.jsonl" 2>/dev/null
    ip netns exec gt-d2 "$DAEMON" dump --store-url-file "$WORK/store-url" --run "multihost-w$w" \
        --episodes >"$WORK/episodes-w$w.jsonl" 2>/dev/null
    stored_steps=$((stored_steps + $(wc -l <"$WORK/steps-w$w.jsonl")))
    stored_episodes=$((stored_episodes + $(wc -l <"$WORK/episodes-w$w.jsonl")))
    # The same (agent, episode, step) twice would be a duplicate.
    d="$(python3 -c 'import json,sys
seen=set(); dup=0
for l in open(sys.argv[1]):
    r=json.loads(l); k=(r.get("agent_id"),r.get("episode_index"),r.get("step_index"))
    dup+=k in seen; seen.add(k)
print(dup)' "$WORK/steps-w$w.jsonl")"
    dup=$((dup + d))
done
lost=$((steps + episodes - stored_steps - stored_episodes + dup))
echo "multihost: steps=$steps episodes=$episodes stored_steps=$stored_steps stored_episodes=$stored_episodes lost=$lost duplicated=$dup"
[[ $steps -gt 0 && $lost == 0 && $dup == 0 ]]
