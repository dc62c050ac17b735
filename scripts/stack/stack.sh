#!/usr/bin/env bash
# Local dependency stack for announcer: Kafka (KRaft), MariaDB, Redis and ejabberd, all private
# instances bound to 127.0.0.1 with their state under ${STACK_DIR:-<repo>/.stack}.
#
#   stack.sh up                 install what is missing, start everything, wait until ready (idempotent)
#   stack.sh down               stop what this script started (idempotent)
#   stack.sh status             one line per server; exit 0 when all are up, 3 otherwise
#   stack.sh env                `export ANNOUNCER_...=` lines for tests:  eval "$(stack.sh env)"
#   stack.sh restart-ejabberd   stop and start our ejabberd node, wait until ready
#   stack.sh restart SERVICE [S] a real restart of kafka, mariadb, redis (data saved first) or ejabberd,
#                               down for S seconds (default 0)
#   stack.sh node-up|node-down|node-pid N
#                               ejabberd node N (2..9) of the local cluster: 127.0.0.N, same ports,
#                               joined to node 1 (STACK_NODES=2 makes `up` start node 2 as well)
#   stack.sh kafka-up|kafka-down|kafka-pid
#                               only the Kafka broker (tests run a private one: STACK_DIR, KAFKA_PORT,
#                               KAFKA_CONTROLLER_PORT and KAFKA_LIBS_DIR name it; kafka-pid prints its pid)
#
# Settings (environment): STACK_DIR, STACK_TIMEOUT (s per server, default 120), STACK_STOP_TIMEOUT
# (s before SIGKILL, default 30), KAFKA_PORT, KAFKA_CONTROLLER_PORT, MYSQL_PORT, REDIS_PORT,
# EJABBERD_C2S_PORT, EJABBERD_COMPONENT_PORT, EJABBERD_HTTP_PORT, KAFKA_LIBS_DIR (jar cache),
# STACK_SERIAL=1 (start servers one after the other instead of in parallel), STACK_NODES (ejabberd
# nodes, default 1).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR

STACK_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
# shellcheck source=lib.sh
. "$STACK_SCRIPTS/lib.sh"
# shellcheck source=kafka.sh
. "$STACK_SCRIPTS/kafka.sh"
# shellcheck source=mariadb.sh
. "$STACK_SCRIPTS/mariadb.sh"
# shellcheck source=redis.sh
. "$STACK_SCRIPTS/redis.sh"
# shellcheck source=ejabberd.sh
. "$STACK_SCRIPTS/ejabberd.sh"

SERVICES=(kafka mariadb redis ejabberd)

usage() {
  sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

# One `up`/`down`/`restart-ejabberd` at a time (tests may call `up` concurrently).
# Descriptor 9: every server launch closes it (see start_bg in lib.sh).
take_lock() {
  mkdir -p "$STACK_DIR"
  exec 9>"$STACK_DIR/.lock"
  if ! flock -n 9; then
    log "another stack.sh holds $STACK_DIR/.lock; waiting for it (up to 600s)"
    flock -w 600 9 || die "could not get $STACK_DIR/.lock within 600s"
  fi
}

# run_all ACTION: runs <service>_ACTION for every service, in parallel unless STACK_SERIAL=1.
# Returns non-zero when any of them failed.
run_all() {
  local action="$1" svc failed=() pids=() i
  if [[ "${STACK_SERIAL:-0}" == 1 ]]; then
    for svc in "${SERVICES[@]}"; do
      ("${svc}_$action") || failed+=("$svc")
    done
  else
    for svc in "${SERVICES[@]}"; do
      ("${svc}_$action") &
      pids+=("$!")
    done
    for i in "${!SERVICES[@]}"; do
      wait "${pids[$i]}" || failed+=("${SERVICES[$i]}")
    done
  fi
  if ((${#failed[@]})); then
    log "ERROR: $action failed for: ${failed[*]}"
    return 1
  fi
}

cmd_up() {
  local t0=$SECONDS svc failed=()
  take_lock
  ensure_packages
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  for svc in "${SERVICES[@]}"; do
    "${svc}_preflight" || failed+=("$svc")
  done
  if ((${#failed[@]})); then
    die "cannot start ${failed[*]}: port(s) taken by processes that are not ours (see above); nothing was started"
  fi
  log "state dir: $STACK_DIR"
  if ! run_all start; then
    cmd_status >&2 || true
    die "up failed after $((SECONDS - t0))s (servers that did start are left running; 'stack.sh down' stops them)"
  fi
  local n
  for ((n = 2; n <= ${STACK_NODES:-1}; n++)); do
    (ejabberd_select "$n" && ejabberd_preflight && ejabberd_start) || die "ejabberd node $n did not come up"
  done
  log "all servers ready in $((SECONDS - t0))s:"
  cmd_status | sed 's/^/[stack]   /' >&2
  log "ejabberdctl: $(ejabberd_ctl_line)"
  log "for tests: eval \"\$($STACK_SCRIPTS/stack.sh env)\""
}

# extra_nodes: the indexes of the ejabberd nodes > 1 that have a state dir, highest first.
extra_nodes() {
  local d
  for d in "$STACK_DIR"/ejabberd[2-9]; do
    [[ -d "$d" ]] && printf '%s\n' "${d##*ejabberd}"
  done | sort -rn
}

cmd_down() {
  local t0=$SECONDS n
  take_lock
  # The extra nodes first, while node 1 runs: Mnesia then knows node 1 holds the latest copy
  # and starts it alone next time.
  for n in $(extra_nodes); do
    (ejabberd_select "$n" && ejabberd_stop keep-epmd) || die "ejabberd node $n could not be stopped"
  done
  if ! run_all stop; then
    die "down: some servers could not be stopped"
  fi
  local port busy=()
  for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$MYSQL_PORT" "$REDIS_PORT" \
    "$EJABBERD_C2S_PORT" "$EJABBERD_COMPONENT_PORT" "$EJABBERD_HTTP_PORT"; do
    [[ -n "$(port_listeners "$port")" ]] && busy+=("$port")
  done
  ((${#busy[@]} == 0)) || warn "still in use (not by us): ${busy[*]}"
  log "stopped in $((SECONDS - t0))s"
}

cmd_status() {
  local svc rc=0 n
  for svc in "${SERVICES[@]}"; do
    "${svc}_status" || rc=3
  done
  for n in $(extra_nodes | sort -n); do
    if ((n <= ${STACK_NODES:-1})); then
      (ejabberd_select "$n" && ejabberd_status) || rc=3
    else
      (ejabberd_select "$n" && ejabberd_status) || true
    fi
  done
  local epid
  epid=$(epmd_our_pid || true)
  if [[ -n "$epid" ]]; then
    echo "epmd      up    pid $epid  $STACK_HOST:$EPMD_PORT (started by stack.sh)"
  fi
  return "$rc"
}

# env_line NAME VALUE: a shell-safe export line (single-quoted).
env_line() {
  local v="${2//\'/\'\\\'\'}"
  printf "export %s='%s'\n" "$1" "$v"
}

cmd_env() {
  env_line ANNOUNCER_KAFKA_BROKERS "$STACK_HOST:$KAFKA_PORT"
  env_line ANNOUNCER_MYSQL_DSN "$MYSQL_USER:$MYSQL_PASSWORD@tcp($STACK_HOST:$MYSQL_PORT)/$MYSQL_DB?parseTime=true&multiStatements=true"
  env_line ANNOUNCER_REDIS_ADDR "$STACK_HOST:$REDIS_PORT"
  env_line ANNOUNCER_XMPP_C2S "$STACK_HOST:$EJABBERD_C2S_PORT"
  env_line ANNOUNCER_XMPP_COMPONENT "$STACK_HOST:$EJABBERD_COMPONENT_PORT"
  env_line ANNOUNCER_COMPONENT_DOMAIN "$COMPONENT_DOMAIN"
  env_line ANNOUNCER_COMPONENT_SECRET "$COMPONENT_SECRET"
  # domain=secret@host:port, as in ejabberd/ejabberd.yml.in
  env_line ANNOUNCER_COMPONENT_SPARES "$(for i in 1 2 3 4 5 6 7 8; do printf 'announcer-r%s.localhost=%s-r%s@%s:%s,' "$i" "$COMPONENT_SECRET" "$i" "$STACK_HOST" "$((8890 + i))"; done | sed 's/,$//')"
  env_line ANNOUNCER_XMPP_DOMAIN "$XMPP_DOMAIN"
  env_line ANNOUNCER_EJABBERD_API "$(ejabberd_api_url)"
  env_line ANNOUNCER_EJABBERDCTL "$(ejabberd_ctl_line)"
  env_line ANNOUNCER_XMPP_CA "$EJABBERD_CA"
  # For tests that run a broker of their own (kafka-up with another STACK_DIR and ports).
  env_line ANNOUNCER_STACK_SCRIPT "$STACK_SCRIPTS/stack.sh"
  env_line ANNOUNCER_KAFKA_LIBS_DIR "$(kafka_libs_dir)"
}

cmd_restart_ejabberd() {
  local t0=$SECONDS
  take_lock
  ejabberd_stop keep-epmd
  ejabberd_preflight || die "cannot restart ejabberd: port(s) taken by processes that are not ours"
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  ejabberd_start || die "ejabberd did not come back"
  log "ejabberd restarted in $((SECONDS - t0))s"
}

# cmd_restart SERVICE [SECONDS_DOWN]: a real restart of one server of the stack, as an operator would do it
# (the fault suite's dependency restarts). Redis saves its data set first, as a Redis with
# persistence does on shutdown: presence and the progress store survive, as they would in production.
# Only this restart loads that dump; `up` starts Redis empty.
cmd_restart() {
  local svc="${1:-}" down="${2:-0}" t0=$SECONDS
  case "$svc" in
    kafka | mariadb | redis | ejabberd) ;;
    *) die "restart: want kafka, mariadb, redis or ejabberd, not '$svc'" ;;
  esac
  take_lock
  if [[ "$svc" == redis ]] && [[ -n "$(redis_pid || true)" ]]; then
    redis_cli shutdown save >/dev/null 2>&1 || warn "redis: SHUTDOWN SAVE failed; stopping with a signal"
  fi
  if [[ "$svc" == ejabberd ]]; then
    ejabberd_stop keep-epmd
  else
    "${svc}_stop"
  fi
  sleep "$down"
  "${svc}_preflight" || die "cannot restart $svc: port(s) taken by processes that are not ours"
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  if [[ "$svc" == redis ]]; then
    redis_start keep-data || die "redis did not come back" # loads what SHUTDOWN SAVE wrote
  else
    "${svc}_start" || die "$svc did not come back"
  fi
  log "$svc restarted in $((SECONDS - t0))s"
}

# node_index N: checks N names an extra ejabberd node.
node_index() {
  [[ "${1:-}" =~ ^[2-9]$ ]] || die "want an ejabberd node number 2..9, not '${1:-}'"
  printf '%s' "$1"
}

cmd_node_up() {
  local n
  n=$(node_index "${1:-}")
  take_lock
  [[ -n "$(ejabberd_pid || true)" ]] || die "ejabberd node 1 is not running: stack.sh up first"
  ejabberd_select "$n"
  ejabberd_preflight || die "cannot start ejabberd node $n: port(s) taken by processes that are not ours"
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  ejabberd_start || die "ejabberd node $n did not come up"
}

cmd_node_down() {
  local n
  n=$(node_index "${1:-}")
  take_lock
  ejabberd_select "$n"
  ejabberd_stop keep-epmd
}

cmd_node_pid() {
  local n
  n=$(node_index "${1:-}")
  ejabberd_select "$n"
  ejabberd_pid || exit 1
}

cmd_kafka_up() {
  take_lock
  kafka_preflight || die "cannot start kafka: port(s) taken by processes that are not ours"
  kafka_start || die "kafka did not come up"
}

cmd_kafka_down() {
  take_lock
  kafka_stop
}

main() {
  case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    restart-ejabberd) cmd_restart_ejabberd ;;
    restart) cmd_restart "${2:-}" "${3:-0}" ;;
    node-up) cmd_node_up "${2:-}" ;;
    node-down) cmd_node_down "${2:-}" ;;
    node-pid) cmd_node_pid "${2:-}" ;;
    kafka-up) cmd_kafka_up ;;
    kafka-down) cmd_kafka_down ;;
    kafka-pid) kafka_pid ;;
    -h | --help | help) usage ;;
    *)
      usage
      exit 2
      ;;
  esac
}

main "$@"
