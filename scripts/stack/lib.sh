# shellcheck shell=bash
# Common helpers for the local dependency stack. Sourced by stack.sh; not run directly.
#
# Conventions: every log line goes to stderr prefixed with "[stack]" so that stdout stays clean for
# `stack.sh env`; functions return non-zero instead of exiting where the caller may want to go on.

STACK_SCRIPTS="${STACK_SCRIPTS:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)}"
REPO_ROOT="${REPO_ROOT:-$(cd "$STACK_SCRIPTS/../.." && pwd -P)}"
STACK_DIR="${STACK_DIR:-$REPO_ROOT/.stack}"
STACK_TIMEOUT="${STACK_TIMEOUT:-120}"      # seconds to wait for one server to become ready
STACK_STOP_TIMEOUT="${STACK_STOP_TIMEOUT:-30}" # seconds between SIGTERM and SIGKILL
STACK_HOST=127.0.0.1

# Ports (override through the environment; `env` reports whatever is in force).
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
MYSQL_PORT="${MYSQL_PORT:-3306}"
REDIS_PORT="${REDIS_PORT:-6379}"
EJABBERD_C2S_PORT="${EJABBERD_C2S_PORT:-5222}"
EJABBERD_COMPONENT_PORT="${EJABBERD_COMPONENT_PORT:-8889}"
EJABBERD_HTTP_PORT="${EJABBERD_HTTP_PORT:-5280}"
export EPMD_PORT=4369 # fixed: every Erlang node and ejabberdctl call looks for epmd there

# erl refuses to start without HOME (it looks for ~/.erlang.cookie).
export HOME="${HOME:-/root}"

log() { printf '[stack] %s\n' "$*" >&2; }
warn() { printf '[stack] WARNING: %s\n' "$*" >&2; }
die() {
  printf '[stack] ERROR: %s\n' "$*" >&2
  exit 1
}

now_ms() { date +%s%3N; }

# ---------------------------------------------------------------------------------------------
# Processes and ports

# pid_alive PID: the process exists and is not a zombie.
pid_alive() {
  local pid="${1:-}" state
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
  [[ "$state" != "Z" && -n "$state" ]]
}

# read_pid FILE: prints the pid stored in FILE (empty when there is none).
read_pid() {
  local f="$1" pid=""
  if [[ -s "$f" ]]; then read -r pid <"$f" || true; fi
  [[ "$pid" =~ ^[0-9]+$ ]] && printf '%s' "$pid"
  return 0
}

# pid_cmdline PID: the process's argv joined with spaces.
pid_cmdline() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }

# pidfile_owner FILE PATTERN: prints the pid stored in FILE when that process is alive and its
# command line contains PATTERN (a stale pid file may name a pid reused by something else).
pidfile_owner() {
  local pid
  pid=$(read_pid "$1")
  [[ -n "$pid" ]] && pid_alive "$pid" && [[ "$(pid_cmdline "$pid")" == *"$2"* ]] &&
    printf '%s' "$pid"
}

# port_open PORT [HOST]: a TCP connect to HOST (default 127.0.0.1):PORT succeeds.
port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/${2:-$STACK_HOST}/$1" 2>/dev/null
}

# port_listeners PORT [HOST]: ss lines of every TCP listener on PORT (any address, or HOST's only).
port_listeners() {
  if [[ -n "${2:-}" ]]; then
    ss -Hltnp "( src $2:$1 )" 2>/dev/null || true
  else
    ss -Hltnp "( sport = :$1 )" 2>/dev/null || true
  fi
}

# port_pids PORT [HOST]: pids listening on PORT, one per line.
port_pids() {
  port_listeners "$1" "${2:-}" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u || true
}

# describe_port PORT [HOST]: human-readable "who holds this port".
describe_port() {
  local lines pid desc=""
  lines=$(port_listeners "$1" "${2:-}")
  if [[ -z "$lines" ]]; then
    printf 'nothing listening'
    return
  fi
  for pid in $(port_pids "$1" "${2:-}"); do
    desc+="pid $pid ($(pid_cmdline "$pid" | tr -s ' ' | sed 's/ $//' | cut -c1-160)); "
  done
  printf '%s | %s' "$(tr -s ' ' <<<"$lines" | tr '\n' ';')" "${desc:-process unknown}"
}

# check_port_free PORT WHAT [OURPID] [HOST]: fails with a clear message when PORT (on HOST only,
# when given) is taken by a process that is not OURPID (or by anything, when OURPID is empty).
check_port_free() {
  local port="$1" what="$2" ourpid="${3:-}" host="${4:-}" listeners pid
  listeners=$(port_listeners "$port" "$host")
  [[ -z "$listeners" ]] && return 0
  for pid in $(port_pids "$port" "$host"); do
    [[ -n "$ourpid" && "$pid" == "$ourpid" ]] && continue
    log "ERROR: port $port (needed by $what) is already in use by a process that is not ours:"
    log "  $(describe_port "$port" "$host")"
    return 1
  done
  # Listeners without a visible pid (another namespace or a kernel socket): not ours either.
  if [[ -z "$(port_pids "$port" "$host")" ]]; then
    log "ERROR: port $port (needed by $what) is already in use: $(describe_port "$port" "$host")"
    return 1
  fi
  return 0
}

# stack.sh holds its lock on descriptor 9; servers must not inherit it (they would keep the lock
# for as long as they run), so every launch closes it ("9>&-").

# start_bg PIDFILE LOGFILE CMD...: runs CMD detached (own session, stdin from /dev/null, stdout and
# stderr appended to LOGFILE, the lock descriptor closed) and records its pid. setsid does not fork here (a background child of
# a non-interactive shell is no process-group leader), so $! is the server's own pid.
start_bg() {
  local pidfile="$1" logfile="$2"
  shift 2
  setsid nohup "$@" </dev/null >>"$logfile" 2>&1 9>&- &
  local pid=$!
  printf '%s\n' "$pid" >"$pidfile"
}

# stop_pid PID WHAT: SIGTERM, wait up to STACK_STOP_TIMEOUT s, then SIGKILL.
stop_pid() {
  local pid="$1" what="$2" waited=0
  pid_alive "$pid" || return 0
  log "$what: stopping pid $pid (SIGTERM)"
  kill -TERM "$pid" 2>/dev/null || true
  wait_pid_gone "$pid" "$STACK_STOP_TIMEOUT" && return 0
  warn "$what: pid $pid still alive after ${STACK_STOP_TIMEOUT}s, sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  while pid_alive "$pid" && ((waited < 50)); do
    sleep 0.1
    waited=$((waited + 1))
  done
  ! pid_alive "$pid"
}

# wait_pid_gone PID SECONDS
wait_pid_gone() {
  local pid="$1" deadline=$((SECONDS + $2))
  while pid_alive "$pid"; do
    ((SECONDS >= deadline)) && return 1
    sleep 0.2
  done
  return 0
}

# wait_ready WHAT PID LOGFILE CHECK_FN: polls CHECK_FN until it succeeds; gives up after
# STACK_TIMEOUT s, or at once when PID (if given) dies. Prints the log's tail on failure.
wait_ready() {
  local what="$1" pid="$2" logfile="$3" check="$4" start=$SECONDS
  local deadline=$((SECONDS + STACK_TIMEOUT))
  while ! "$check"; do
    if [[ -n "$pid" ]] && ! pid_alive "$pid"; then
      log "ERROR: $what died while starting (pid $pid); last lines of $logfile:"
      tail -n 30 "$logfile" 2>/dev/null | sed 's/^/[stack]   /' >&2 || true
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "ERROR: $what not ready after ${STACK_TIMEOUT}s; last lines of $logfile:"
      tail -n 30 "$logfile" 2>/dev/null | sed 's/^/[stack]   /' >&2 || true
      return 1
    fi
    sleep 0.5
  done
  log "$what: ready after $((SECONDS - start))s"
}

# rotate_log FILE: keeps one previous generation (FILE.1) so the new run's readiness markers are
# not confused with an old run's.
rotate_log() {
  [[ -e "$1" ]] && mv -f "$1" "$1.1"
  : >"$1"
}

# ---------------------------------------------------------------------------------------------
# What every server's <svc>_start, <svc>_stop and <svc>_status share

# await_running WHAT PID LOGFILE CHECK_FN: for a server of ours found running at start: returns at
# once when CHECK_FN says it is ready, else waits for it as wait_ready does.
await_running() {
  local what="$1" pid="$2" logfile="$3" check="$4"
  if "$check"; then
    log "$what: already running (pid $pid)"
    return 0
  fi
  log "$what: pid $pid is ours but not ready yet; waiting"
  wait_ready "$what" "$pid" "$logfile" "$check"
}

# wait_started WHAT PIDFILE LOGFILE CHECK_FN WAITING_FOR: after a launch that recorded its pid in
# PIDFILE, logs what the start waits for and waits until CHECK_FN succeeds (see wait_ready).
wait_started() {
  local what="$1" logfile="$3" check="$4" waiting_for="$5" pid
  pid=$(read_pid "$2")
  log "$what: started pid $pid, waiting for $waiting_for"
  wait_ready "$what" "$pid" "$logfile" "$check"
}

# stop_server WHAT PID_FN STOP_FN FILE...: stops our server (the pid PID_FN prints, if any) with
# `STOP_FN PID WHAT` (stop_pid, or a server's own), dies when it will not stop, then removes FILEs.
stop_server() {
  local what="$1" pid_fn="$2" stop_fn="$3" pid
  shift 3
  pid=$("$pid_fn" || true)
  if [[ -z "$pid" ]]; then
    log "$what: not running"
  else
    "$stop_fn" "$pid" "$what" || die "$what: could not stop pid $pid"
  fi
  rm -f "$@"
}

# print_status WHAT PID_FN CHECK_FN NOT_READY DETAILS: the server's line of `stack.sh status`
# ("up" with DETAILS when our pid runs and CHECK_FN succeeds, "starting" with NOT_READY when it
# only runs, else "down"); returns 0 only when it is up.
print_status() {
  local what="$1" pid_fn="$2" check="$3" not_ready="$4" details="$5" pid
  pid=$("$pid_fn" || true)
  if [[ -n "$pid" ]] && "$check"; then
    printf '%-9s up    pid %s  %s\n' "$what" "$pid" "$details"
    return 0
  elif [[ -n "$pid" ]]; then
    printf '%-9s starting  pid %s (%s)\n' "$what" "$pid" "$not_ready"
  else
    printf '%-9s down\n' "$what"
  fi
  return 1
}

# ---------------------------------------------------------------------------------------------
# Installing what is missing

# Binaries we need and the Debian package that brings each (for the reader; the install below
# always asks for the whole set).
STACK_REQUIRED_BINARIES=(
  "mariadbd:mariadb-server"
  "mariadb-install-db:mariadb-server"
  "mysql:mariadb-client"
  "mysqladmin:mariadb-client"
  "redis-server:redis-server"
  "redis-cli:redis-tools"
  "ejabberdctl:ejabberd"
  "epmd:erlang-base"
  "openssl:openssl"
  "curl:curl"
  "ss:iproute2"
  "setsid:util-linux"
  "flock:util-linux"
)

have_bin() { command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" ]] || [[ -x "/sbin/$1" ]]; }

ensure_policy_rc_d() {
  # Debian's maintainer scripts start daemons through invoke-rc.d unless policy-rc.d says 101.
  local f=/usr/sbin/policy-rc.d
  if [[ -f "$f" ]] && grep -qx 'exit 101' "$f"; then
    return 0
  fi
  [[ -e "$f" ]] && cp -p "$f" "$f.stack-backup"
  printf '#!/bin/sh\n# written by announcer scripts/stack: packages must not start system daemons\nexit 101\n' >"$f"
  chmod 0755 "$f"
  log "wrote $f (exit 101) so package installs do not start system daemons"
}

ensure_packages() {
  local entry bin missing=() pkgs=()
  for entry in "${STACK_REQUIRED_BINARIES[@]}"; do
    bin="${entry%%:*}"
    have_bin "$bin" || missing+=("$bin")
  done
  ((${#missing[@]} == 0)) && return 0
  log "missing binaries: ${missing[*]} -> installing Debian packages"
  [[ "$(id -u)" == 0 ]] || die "need root to apt-get install (missing: ${missing[*]})"
  # Always the full set: cheap when most are present, and apt resolves the rest.
  pkgs=(mariadb-server redis-server ejabberd openssl curl iproute2 util-linux)
  ensure_policy_rc_d
  export DEBIAN_FRONTEND=noninteractive
  local t0=$SECONDS
  if [[ -z "${STACK_APT_UPDATED:-}" ]]; then
    apt-get update -qq >&2 || die "apt-get update failed"
    STACK_APT_UPDATED=1
  fi
  apt-get install -y -qq "${pkgs[@]}" >&2 ||
    die "apt-get install ${pkgs[*]} failed"
  log "installed ${pkgs[*]} in $((SECONDS - t0))s"
  for entry in "${STACK_REQUIRED_BINARIES[@]}"; do
    bin="${entry%%:*}"
    have_bin "$bin" || die "still missing after install: $bin"
  done
}
