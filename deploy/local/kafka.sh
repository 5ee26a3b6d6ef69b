#!/usr/bin/env bash
# Single-node KRaft Apache Kafka for development and tests, from Maven Central jars.
#
#   deploy/local/kafka.sh start    resolve jars (once), start a broker on a free
#                                  loopback port, wait until it answers; the last
#                                  line printed is CDR_KAFKA_BOOTSTRAP_SERVERS=host:port
#   deploy/local/kafka.sh stop     stop it
#   deploy/local/kafka.sh status   say whether it runs, and where
#
# Environment:
#   KAFKA_JARS_DIR  jar cache (default <repo>/.cache/kafka/jars, git-ignored)
#   KAFKA_RUN_DIR   pid, port, data and logs of one broker (default <repo>/.cache/kafka/run);
#                   give each concurrent broker its own
#   KAFKA_HEAP      JVM heap (default 512m)
#   KAFKA_START_TIMEOUT  seconds to wait for the broker (default 90)
#   KAFKA_EXTRA_LISTENERS  more listeners, each named after its protocol, advertised as given
#                   (e.g. SASL_SSL://localhost:9094,SSL://localhost:9095); the PLAINTEXT one stays
#   KAFKA_EXTRA_PROPERTIES  a file appended to server.properties (TLS stores, SASL JAAS lines)
#   KAFKA_FORMAT_ARGS  more arguments of the storage format (e.g. --add-scram 'SCRAM-SHA-512=[...]')
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
jars="${KAFKA_JARS_DIR:-$repo/.cache/kafka/jars}"
run="${KAFKA_RUN_DIR:-$repo/.cache/kafka/run}"
heap="${KAFKA_HEAP:-512m}"
timeout="${KAFKA_START_TIMEOUT:-90}"

log() { echo "kafka.sh: $*" >&2; }

resolve_jars() {
  if [[ -f "$jars/.complete" ]]; then return; fi
  command -v mvn >/dev/null || { log "mvn not found; install Maven and Java 17"; exit 1; }
  log "resolving Kafka jars from Maven Central into $jars (once)"
  mkdir -p "$jars"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$jars" >&2
  touch "$jars/.complete"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

running() {
  [[ -f "$run/pid" ]] && kill -0 "$(cat "$run/pid")" 2>/dev/null
}

answers() {
  # The broker logs this once its listeners accept clients and metadata is loaded.
  grep -q "Kafka Server started" "$run/logs/server.log" 2>/dev/null &&
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
  if running; then
    log "already running (pid $(cat "$run/pid"))"
    echo "CDR_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$(cat "$run/port")"
    return
  fi
  command -v java >/dev/null || { log "java not found; Java 17+ is required"; exit 1; }
  resolve_jars
  rm -rf "$run"
  mkdir -p "$run/data" "$run/logs"
  local port ctl
  port="$(free_port)"
  ctl="$(free_port)"
  while [[ "$ctl" == "$port" ]]; do ctl="$(free_port)"; done
  local extra="${KAFKA_EXTRA_LISTENERS:-}" extra_map="" listener
  for listener in ${extra//,/ }; do extra_map+=",${listener%%://*}:${listener%%://*}"; done
  cat >"$run/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$ctl
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctl${extra:+,$extra}
advertised.listeners=PLAINTEXT://127.0.0.1:$port${extra:+,$extra}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT$extra_map
inter.broker.listener.name=PLAINTEXT
log.dirs=$run/data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
message.max.bytes=4194304
PROPS
  if [[ -n "${KAFKA_EXTRA_PROPERTIES:-}" ]]; then cat "$KAFKA_EXTRA_PROPERTIES" >>"$run/server.properties"; fi
  local cp="$jars/*"
  local jvm=(-Xms"$heap" -Xmx"$heap" -XX:+UseG1GC -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$here/log4j2.properties" -Dkafka.logs.dir="$run/logs")
  local cluster
  cluster="$(java "${jvm[@]}" -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
  local format_args=()
  if [[ -n "${KAFKA_FORMAT_ARGS:-}" ]]; then read -r -a format_args <<<"$KAFKA_FORMAT_ARGS"; fi
  java "${jvm[@]}" -cp "$cp" kafka.tools.StorageTool format --standalone --ignore-formatted \
    -t "$cluster" -c "$run/server.properties" "${format_args[@]}" >"$run/logs/format.log" 2>&1 ||
    { log "storage format failed:"; cat "$run/logs/format.log" >&2; exit 1; }
  nohup java "${jvm[@]}" -cp "$cp" kafka.Kafka "$run/server.properties" \
    >"$run/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$run/pid"
  echo "$port" >"$run/port"
  local waited=0
  until answers "$port"; do
    if ! running; then
      log "broker exited during start-up; last log lines:"
      tail -n 30 "$run/logs/server.log" "$run/logs/stdout.log" >&2 || true
      exit 1
    fi
    if ((waited >= timeout * 5)); then
      log "broker did not answer within ${timeout}s; see $run/logs/server.log"
      stop
      exit 1
    fi
    sleep 0.2
    waited=$((waited + 1))
  done
  log "broker up (pid $(cat "$run/pid")), logs in $run/logs"
  echo "CDR_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$port"
}

stop() {
  if ! running; then
    log "not running"
    rm -f "$run/pid"
    return
  fi
  local pid
  pid="$(cat "$run/pid")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$run/pid"
  log "stopped"
}

status() {
  if running; then
    echo "running pid=$(cat "$run/pid") CDR_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$(cat "$run/port")"
  else
    echo "stopped"
    return 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
