#!/usr/bin/env bash
# `make run`: the whole service on this machine, in one go.
# Starts a local Kafka (unless CDR_KAFKA_BOOTSTRAP_SERVERS is set), `cdr run` (ingest +
# API in one process on the embedded store in ./data) and the PBX simulator, then
# prints the API URL, a dev token and a curl line. Ctrl-C stops everything it started.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

started_kafka=""
pids=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -n "$started_kafka" ]]; then "$here/kafka.sh" stop || true; fi
  echo "stopped."
}
trap cleanup INT TERM EXIT

if [[ -z "${CDR_KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
  # A broker already started by `make kafka-start` is used and left running.
  if ! "$here/kafka.sh" status >/dev/null 2>&1; then started_kafka=1; fi
  line="$("$here/kafka.sh" start | tail -n1)"
  export "${line?}"
fi
echo "Kafka: $CDR_KAFKA_BOOTSTRAP_SERVERS"

tenant="${CDR_DEV_TENANT:-demo.tel4vn.com}"
token="${CDR_DEV_TOKEN:-dev-$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')}"
digest="$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)"
export CDR_API_TOKENS="${CDR_API_TOKENS:+$CDR_API_TOKENS,}$tenant:$digest"
export CDR_CURSOR_SECRET="${CDR_CURSOR_SECRET:-$(python3 -c 'import secrets; print(secrets.token_hex(32))')}"
export CDR_DATA_DIR="${CDR_DATA_DIR:-$repo/data}"
export CDR_API_PORT="${CDR_API_PORT:-8000}"
export CDR_BATCH_TIME_MS="${CDR_BATCH_TIME_MS:-500}"
mkdir -p "$repo/.cache"

cdr create-topics
cdr run >"$repo/.cache/cdr-run.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$CDR_API_PORT/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "${pids[0]}" 2>/dev/null; then
    echo "cdr run exited; its log:"; tail -n 40 "$repo/.cache/cdr-run.log"; exit 1
  fi
  sleep 0.5
done
cdr simulate --rate "${CDR_SIMULATE_RATE:-20}" --tenants "$tenant,acme.pbx.vn,hanoi.callcenter.vn" \
  >"$repo/.cache/cdr-simulate.log" 2>&1 &
pids+=($!)

cat <<MSG

  CDR API      http://127.0.0.1:$CDR_API_PORT/v1/cdr
  console      http://127.0.0.1:$CDR_API_PORT/console  (sign in with the dev token)
  tenant       $tenant
  dev token    $token
  logs         .cache/cdr-run.log, .cache/cdr-simulate.log

  Try (CDRs appear within a couple of seconds):
    curl -s -H 'Authorization: Bearer $token' 'http://127.0.0.1:$CDR_API_PORT/v1/cdr?page=1&limit=5'

  Ctrl-C stops the simulator, the service and the Kafka broker this started.
MSG
wait "${pids[0]}"
