# shellcheck shell=bash disable=SC2153 # KAFKA_PORT etc. come from lib.sh
# Kafka 4.x KRaft single node (broker + controller) from Maven Central jars. Sourced by stack.sh.

KAFKA_DIR="$STACK_DIR/kafka"
KAFKA_POM="$STACK_SCRIPTS/kafka/pom.xml"
KAFKA_LOG4J="$STACK_SCRIPTS/kafka/log4j2.properties"
KAFKA_PROPS="$KAFKA_DIR/conf/server.properties"
KAFKA_PIDFILE="$KAFKA_DIR/run/kafka.pid"
KAFKA_OUT="$KAFKA_DIR/logs/kafka.out"    # JVM stdout/stderr
KAFKA_LOG="$KAFKA_DIR/logs/server.log"   # log4j
KAFKA_HEAP="${KAFKA_HEAP:--Xms256m -Xmx512m}"

kafka_version() {
  sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_POM" | head -n1
}

# The jar cache lives in the state dir (KAFKA_LIBS_DIR overrides), one folder per Kafka version;
# a stamp with the pom's checksum tells whether the folder is complete and current.
kafka_libs_dir() { printf '%s' "${KAFKA_LIBS_DIR:-$KAFKA_DIR/libs-$(kafka_version)}"; }

kafka_ensure_libs() {
  local libs stamp sum tmp t0=$SECONDS
  libs=$(kafka_libs_dir)
  stamp="$libs/.pom.sha256"
  sum=$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$sum" ]] && compgen -G "$libs/kafka_2.13-*.jar" >/dev/null; then
    return 0
  fi
  command -v mvn >/dev/null || die "kafka: mvn not found (needed once to fetch the broker jars)"
  log "kafka: fetching Kafka $(kafka_version) jars with Maven into $libs"
  tmp="$libs.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp" "$KAFKA_DIR/logs"
  if ! mvn -B -q -f "$KAFKA_POM" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" >"$KAFKA_DIR/logs/mvn.log" 2>&1; then
    tail -n 30 "$KAFKA_DIR/logs/mvn.log" | sed 's/^/[stack]   /' >&2
    rm -rf "$tmp"
    die "kafka: mvn copy-dependencies failed (see $KAFKA_DIR/logs/mvn.log)"
  fi
  compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || die "kafka: mvn ran but no kafka_2.13 jar in $tmp"
  printf '%s\n' "$sum" >"$tmp/.pom.sha256"
  rm -rf "$libs"
  mv "$tmp" "$libs"
  log "kafka: $(find "$libs" -name '*.jar' | wc -l) jars ready in $((SECONDS - t0))s"
}

# kafka_pid: our broker's pid, when it runs.
kafka_pid() { pidfile_owner "$KAFKA_PIDFILE" "kafka.Kafka $KAFKA_PROPS"; }

KAFKA_STARTED="$KAFKA_DIR/run/kafka.started" # pid of the broker once it logged "Kafka Server started"

# Ready: the port answers and this broker logged "Kafka Server started" (remembered in
# KAFKA_STARTED, since log4j may roll server.log away later).
kafka_ready() {
  port_open "$KAFKA_PORT" || return 1
  local pid
  pid=$(read_pid "$KAFKA_PIDFILE")
  [[ -n "$pid" && "$(read_pid "$KAFKA_STARTED")" == "$pid" ]] && return 0
  if grep -q 'Kafka Server started' "$KAFKA_LOG" 2>/dev/null; then
    printf '%s\n' "$pid" >"$KAFKA_STARTED"
    return 0
  fi
  return 1
}

kafka_preflight() {
  local pid
  pid=$(kafka_pid || true)
  check_port_free "$KAFKA_PORT" "kafka (PLAINTEXT)" "$pid" &&
    check_port_free "$KAFKA_CONTROLLER_PORT" "kafka (CONTROLLER)" "$pid"
}

# A cluster id is 16 random bytes in URL-safe base64 without padding (what StorageTool random-uuid
# prints), made here without booting a JVM. Ids starting with '-' are avoided like Kafka does.
kafka_new_cluster_id() {
  local id
  while :; do
    id=$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [[ ${#id} == 22 && "$id" != -* && "$id" != AAAAAAAAAAAAAAAAAAAAA* ]] && break
  done
  printf '%s' "$id"
}

# A SASL_SSL listener besides PLAINTEXT, for tests of the services' [bus] tls and sasl_* settings:
# KAFKA_SASL_SSL_PORT, KAFKA_TLS_KEYSTORE (a PEM file: the broker's unencrypted PKCS#8 key and its
# certificate chain), and KAFKA_SASL_PLAIN_USER / KAFKA_SASL_PLAIN_PASSWORD (the one PLAIN user).
# SCRAM users are added through the admin API (AlterUserScramCredentials) on the PLAINTEXT port.
kafka_secure_listener() {
  [[ -n "${KAFKA_SASL_SSL_PORT:-}" ]] || return 0
  [[ -s "${KAFKA_TLS_KEYSTORE:-}" ]] || die "kafka: KAFKA_SASL_SSL_PORT needs KAFKA_TLS_KEYSTORE (a PEM key and chain)"
  cat <<PROPS

# SASL_SSL listener (KAFKA_SASL_SSL_PORT)
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
ssl.keystore.type=PEM
ssl.keystore.location=$KAFKA_TLS_KEYSTORE
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_${KAFKA_SASL_PLAIN_USER:-announcer}="${KAFKA_SASL_PLAIN_PASSWORD:-announcer}";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
PROPS
}

kafka_write_config() {
  mkdir -p "$KAFKA_DIR/conf" "$KAFKA_DIR/data" "$KAFKA_DIR/logs" "$KAFKA_DIR/run"
  local listeners="PLAINTEXT://$STACK_HOST:$KAFKA_PORT,CONTROLLER://$STACK_HOST:$KAFKA_CONTROLLER_PORT"
  local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  if [[ -n "${KAFKA_SASL_SSL_PORT:-}" ]]; then
    listeners="$listeners,SASL_SSL://$STACK_HOST:$KAFKA_SASL_SSL_PORT"
    protocols="$protocols,SASL_SSL:SASL_SSL"
  fi
  cat >"$KAFKA_PROPS" <<PROPS
# Generated by scripts/stack/kafka.sh; rewritten at every start.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$STACK_HOST:$KAFKA_CONTROLLER_PORT
listeners=$listeners
advertised.listeners=$listeners
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
log.dirs=$KAFKA_DIR/data

# single node
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1

# test comfort
num.partitions=1
group.initial.rebalance.delay.ms=0
offsets.topic.num.partitions=1
transaction.state.log.num.partitions=1
log.cleaner.dedupe.buffer.size=16777216
auto.create.topics.enable=true
delete.topic.enable=true
PROPS
  kafka_secure_listener >>"$KAFKA_PROPS"
}

kafka_java() {
  local libs
  libs=$(kafka_libs_dir)
  java -Dlog4j2.configurationFile="$KAFKA_LOG4J" -Dkafka.logs.dir="$KAFKA_DIR/logs" -cp "$libs/*" "$@"
}

kafka_format() {
  local id
  if [[ ! -s "$KAFKA_DIR/cluster.id" ]]; then
    kafka_new_cluster_id >"$KAFKA_DIR/cluster.id"
  fi
  id=$(cat "$KAFKA_DIR/cluster.id")
  [[ -f "$KAFKA_DIR/data/meta.properties" ]] && return 0
  log "kafka: formatting $KAFKA_DIR/data (cluster id $id)"
  kafka_java -Xmx256m kafka.tools.StorageTool format --standalone -t "$id" -c "$KAFKA_PROPS" \
    --ignore-formatted >"$KAFKA_DIR/logs/format.log" 2>&1 || {
    tail -n 20 "$KAFKA_DIR/logs/format.log" | sed 's/^/[stack]   /' >&2
    die "kafka: storage format failed (see $KAFKA_DIR/logs/format.log)"
  }
}

kafka_start() {
  local pid
  pid=$(kafka_pid || true)
  if [[ -n "$pid" ]]; then
    await_running kafka "$pid" "$KAFKA_LOG" kafka_ready
    return
  fi
  command -v java >/dev/null || die "kafka: java not found"
  kafka_ensure_libs
  kafka_write_config
  kafka_format
  rotate_log "$KAFKA_OUT"
  rotate_log "$KAFKA_LOG"
  rm -f "$KAFKA_STARTED"
  # -UseCodeCacheFlushing: the tests and benchmarks leave the broker idle for seconds between
  # bursts, and JDK 17's sweeper then threw away the compiled request path (8,872 methods in one
  # sweep) for C2 to compile again on the next burst: 3.4 CPU-s of C2 in one fanout benchmark, more
  # than the request handlers used, on 2 cores the services share. A broker under steady load keeps
  # its code; the code cache (240 MB) holds all of it (about 35 MB).
  # shellcheck disable=SC2086 # KAFKA_HEAP holds several JVM flags
  start_bg "$KAFKA_PIDFILE" "$KAFKA_OUT" java $KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:-UseCodeCacheFlushing \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_LOG4J" -Dkafka.logs.dir="$KAFKA_DIR/logs" \
    -cp "$(kafka_libs_dir)/*" kafka.Kafka "$KAFKA_PROPS"
  wait_started kafka "$KAFKA_PIDFILE" "$KAFKA_LOG" kafka_ready "'Kafka Server started' and $STACK_HOST:$KAFKA_PORT"
}

kafka_stop() { stop_server kafka kafka_pid stop_pid "$KAFKA_PIDFILE" "$KAFKA_STARTED"; }

kafka_status() {
  print_status kafka kafka_pid kafka_ready "not ready" \
    "PLAINTEXT $STACK_HOST:$KAFKA_PORT  CONTROLLER $STACK_HOST:$KAFKA_CONTROLLER_PORT"
}
