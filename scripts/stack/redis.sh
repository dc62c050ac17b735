# shellcheck shell=bash
# Redis: a private, memory-only instance on 127.0.0.1 (daemonised, pid file). Sourced by stack.sh.
# Only `stack.sh restart redis` keeps the data set over a restart (see redis_start).

REDIS_DIR="$STACK_DIR/redis"
REDIS_PIDFILE="$REDIS_DIR/run/redis.pid"
REDIS_LOG="$REDIS_DIR/logs/redis.log"
# The file SHUTDOWN SAVE writes in data/ and a start loads.
REDIS_DUMP=dump.rdb

redis_cli() { redis-cli -h "$STACK_HOST" -p "$REDIS_PORT" "$@"; }

# redis_pid: our server's pid, when it runs. Redis rewrites its argv, so it is recognised by its
# working directory (--dir) instead.
redis_pid() {
  local pid
  pid=$(read_pid "$REDIS_PIDFILE")
  [[ -n "$pid" ]] && pid_alive "$pid" && [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == "$REDIS_DIR/data" ]] &&
    printf '%s' "$pid"
}

redis_ready() {
  port_open "$REDIS_PORT" && [[ "$(redis_cli ping 2>/dev/null)" == PONG ]]
}

redis_preflight() {
  local pid
  pid=$(redis_pid || true)
  check_port_free "$REDIS_PORT" redis "$pid"
}

# Demo presence in the first generation's model: user -> node address, node address -> set of
# users, and a hash of offline users with the time (ms) they went offline.
redis_seed() {
  redis_cli >/dev/null <<CMDS || die "redis: seeding demo presence failed"
SET alice 127.0.0.1
SET bob 127.0.0.1
SADD 127.0.0.1 alice bob
DEL carol
HSET offline-users carol $(now_ms)
CMDS
  log "redis: demo presence seeded (alice, bob online at 127.0.0.1; carol offline)"
}

# redis_start [keep-data]: --save '' only stops saving; Redis still loads the dump.rdb that
# `stack.sh restart redis` (SHUTDOWN SAVE) left. Only that restart keeps it (keep-data): any other
# start begins empty, as a memory-only stack should, instead of with an old run's test keys.
redis_start() {
  local pid keep="${1:-}"
  pid=$(redis_pid || true)
  if [[ -n "$pid" ]]; then
    await_running redis "$pid" "$REDIS_LOG" redis_ready
    return
  fi
  mkdir -p "$REDIS_DIR/data" "$REDIS_DIR/run" "$REDIS_DIR/logs"
  rm -f "$REDIS_PIDFILE"
  [[ "$keep" == keep-data ]] || rm -f "$REDIS_DIR/data/$REDIS_DUMP"
  [[ -f "$REDIS_LOG" ]] && printf '\n===== start %s =====\n' "$(date -Is)" >>"$REDIS_LOG"
  redis-server --bind "$STACK_HOST" --port "$REDIS_PORT" --dir "$REDIS_DIR/data" \
    --daemonize yes --pidfile "$REDIS_PIDFILE" --logfile "$REDIS_LOG" \
    --save '' --dbfilename "$REDIS_DUMP" --appendonly no --protected-mode yes --supervised no \
    >>"$REDIS_DIR/logs/redis.out" 2>&1 </dev/null 9>&- || die "redis: redis-server failed to start (see $REDIS_LOG)"
  local deadline=$((SECONDS + 10))
  until [[ -s "$REDIS_PIDFILE" ]]; do
    ((SECONDS < deadline)) || die "redis: no pid file after 10s (see $REDIS_LOG)"
    sleep 0.1
  done
  wait_started redis "$REDIS_PIDFILE" "$REDIS_LOG" redis_ready "$STACK_HOST:$REDIS_PORT" || return 1
  redis_seed
}

redis_stop() { stop_server redis redis_pid stop_pid "$REDIS_PIDFILE"; }

redis_status() { print_status redis redis_pid redis_ready "not ready" "$STACK_HOST:$REDIS_PORT"; }
