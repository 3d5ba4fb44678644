#!/usr/bin/env bash
# `make bench`: imgflow's thumbnail engine against its peers, then the whole stack over HTTP.
# Prints figures (images/s, latency, RSS) and ratios measured in this one run; nothing passes or
# fails on a threshold. See bench/README.md.
#
# Usage: bench/run.sh [--investigate] [--node]    (or BENCH_INVESTIGATE=1, BENCH_NODE=1)
#   --investigate   also time candidate changes to the worker's thumbnail step (about 4 min more)
#   --node          also autoscaling with real pods on the local node (make cluster-up), by
#                   imgflow's operator (~3 min), the scale-out per worker core (~5 min,
#                   bench.node_scaleout) and by KEDA + HPA (~25 min, bench.keda)
# Knobs: BENCH_ROUNDS (5), BENCH_SECONDS (0.5) per engine measurement; BENCH_E2E_PASSES (3),
#        BENCH_E2E_INFLIGHT (4), BENCH_E2E_STORAGE (local|gridfs|s3), BENCH_E2E_SUBSETS (all; e.g.
#        jpeg1080) for the end-to-end part; BENCH_PEERS_SECONDS (5) per output and server against
#        imaginary and thumbor (built once into ~/.cache/imgflow/bench-peers by bench.peers.build).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

investigate=${BENCH_INVESTIGATE:-0}
node=${BENCH_NODE:-0}
for arg in "$@"; do
  case $arg in
    --investigate) investigate=1 ;;
    --node) node=1 ;;
    *) echo "usage: bench/run.sh [--investigate] [--node]" >&2; exit 2 ;;
  esac
done

log() { echo "bench: $*" >&2; }

# sharp, the peer from npm, pinned by bench/package-lock.json; installed again only when that changes
command -v node >/dev/null || { log "node (>= 20.9) and npm are needed for sharp"; exit 1; }
lock_sum=$(sha256sum bench/package-lock.json | cut -d' ' -f1)
stamp=bench/node_modules/.imgflow-lock-sha256
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_sum" ]; then
  log "installing sharp (npm ci)"
  (cd bench && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" >"$stamp"
fi

results=bench/.results
mkdir -p "$results"
rm -f "$results"/*.json
started=$SECONDS
py() { uv run --frozen python "$@"; }

py -m bench.corpus
# imaginary and thumbor, the peers of the whole stack, from the Go module proxy and PyPI; a peer
# that cannot be built is said and left out
py -m bench.peers.build
log "engine part (about 4 min)"
py -m bench.engine --out "$results/engine.json"
log "end-to-end part (about 30 s)"
py -m bench.e2e --engine "$results/engine.json" --out "$results/e2e.json"
log "the same, clients polling instead of following Server-Sent Events (about 30 s)"
BENCH_E2E_WAIT=poll py -m bench.e2e --engine "$results/engine.json" --out "$results/e2e-poll.json"
log "the same over 528 jobs: does the rate stay flat over blocks of 50 as jobs accumulate? (about 40 s)"
BENCH_E2E_PASSES=11 py -m bench.e2e --engine "$results/engine.json" --out "$results/e2e-blocks.json"
log "imgflow end to end against imaginary and thumbor, two workloads (about 4 min)"
py -m bench.peers.run --engine "$results/engine.json" --out "$results/peers.json"
log "the API's CPU per accepted upload against a bare Starlette endpoint taking the same body (about 1 min)"
py -m bench.accept
log "republishing after Redis lost its data (about 20 s)"
py -m bench.republish --jobs 5000
log "what durable job writes cost against the database's old crash-unsafe settings (about 30 s)"
py -m bench.durability
log "several outputs of one upload against one (about 1 min)"
py -m bench.outputs
log "what API keys, rate limits and Idempotency-Key add per request (about 40 s)"
py -m bench.auth_cost
log "a tenant's small job and share of the workers while another tenant holds 1,000 heavy jobs queued (about 3 min)"
py -m bench.fairness
log "another tenant's latency while one key attacks the API, against quiet (about 4 min)"
py -m bench.isolation --out "$results/isolation.json"
log "another tenant's webhook delay while one tenant's 20 endpoints never answer, against quiet (about 30 s)"
py -m bench.webhooks --out "$results/webhooks.json"
log "accept -> completed for an identical upload that reuses a finished job's outputs, against a made one (about 30 s)"
py -m bench.reuse --out "$results/reuse.json"
log "what each output's placeholder (ThumbHash, palette; BlurHash when asked) adds to the engine's CPU (about 1 min)"
py -m bench.placeholders
if [ "$investigate" = 1 ]; then
  log "investigation (about 4 min)"
  py -m bench.studies.investigate --out "$results/investigate.json"
fi
if [ "$node" = 1 ]; then
  log "autoscaling with real pods (make cluster-up, then the release of make deploy with scale-to-zero)"
  make --no-print-directory cluster-up
  py -m bench.node_autoscale --install --cycles 8 --json "$results/node_autoscale.json"
  log "images/s per worker core at 1, 2 and 3 worker pods of one core, against imaginary given one core (~5 min)"
  py -m bench.node_scaleout --install --json "$results/node_scaleout.json"
  log "the same bursts scaled by KEDA + HPA instead (bench.peers.keda builds KEDA once; ~25 min)"
  py -m bench.keda --install --json "$results/keda.json"
fi
py -m bench.summary --engine "$results/engine.json" --e2e "$results/e2e.json" --peers "$results/peers.json"
echo
echo "bench: done in $((SECONDS - started)) s; figures as JSON and server logs in $results/"
