#!/usr/bin/env bash
# `make run`: the dependencies (scripts/stack), then the four services on loopback, logs in this
# terminal. Ctrl-C stops the services; `make stack-down` stops the dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=${ANNOUNCER_CONFIG:-configs/announcer.toml}
REST=127.0.0.1:8080
declare -A DEBUG=([ingress]=6060 [fanout]=6061 [sender]=6062 [archiver]=6063)
declare -A ARGS=()
ORDER=(archiver sender fanout ingress) # downstream first, so nothing waits on a missing consumer

# STACK_NODES=2: a two-node ejabberd cluster (node 2 on 127.0.0.2, same ports) and one sender per node.
NODES=${STACK_NODES:-1}
export STACK_NODES=$NODES
if ((NODES > 1)); then
	cluster=.stack/announcer-cluster.toml
	mkdir -p .stack
	nodes=127.0.0.1:8889
	for ((n = 2; n <= NODES; n++)); do nodes+=",127.0.0.$n:8889"; done
	# The same config with every node listed; each node's presence address is its IP.
	sed -e "s|^cluster_nodes = \"127.0.0.1:8889\"|cluster_nodes = \"$nodes\"|" "$CONFIG" >"$cluster"
	for ((n = 2; n <= NODES; n++)); do
		printf '\n[[node]]\nname = "node%d"\naddress = "127.0.0.%d:8889"\npresence_addresses = ["127.0.0.%d"]\n' "$n" "$n" "$n" >>"$cluster"
		DEBUG[sender$n]=$((6062 + 2 * n - 2)) # 6064, 6066, …
		ARGS[sender$n]="-node node$n"
		ORDER=("${ORDER[0]}" "sender$n" "${ORDER[@]:1}")
	done
	CONFIG=$cluster
fi

say() { printf '[run] %s\n' "$*"; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

bash scripts/stack/stack.sh up
make --no-print-directory build

for p in 8080 "${DEBUG[@]}"; do
	if port_busy "$p"; then
		say "port 127.0.0.1:$p is already taken:"
		ss -ltnp "sport = :$p" 2>/dev/null | tail -n +2 || true
		say "stop that process (an earlier 'make run'?) and try again"
		exit 1
	fi
done

pids=()
stop_all() {
	trap - INT TERM EXIT
	if ((${#pids[@]})); then
		say "stopping services"
		# Upstream first: ingress, then fanout, sender, archiver.
		for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
		wait "${pids[@]}" 2>/dev/null || true
	fi
}
trap 'stop_all; exit 130' INT TERM
trap stop_all EXIT

for s in "${ORDER[@]}"; do
	# shellcheck disable=SC2086 # ARGS holds whole flags
	bin/announcer-"${s%%[0-9]*}" -config "$CONFIG" -debug-port "127.0.0.1:${DEBUG[$s]}" ${ARGS[$s]:-} \
		> >(sed -u "s/^/[$s] /") 2>&1 &
	pids+=($!)
done

for s in "${ORDER[@]}"; do
	url="http://127.0.0.1:${DEBUG[$s]}/readyz"
	for ((t = 0; ; t++)); do
		if curl -fsS -m 2 "$url" >/dev/null 2>&1; then break; fi
		if ((t >= 120)); then
			say "$s is not ready after 60 s: $(curl -sS -m 2 "$url" 2>&1 || true)"
			exit 1
		fi
		sleep 0.5
	done
	say "$s ready (debug, metrics, pprof on 127.0.0.1:${DEBUG[$s]})"
done

tmpl="<message to='%s' from='announcer.localhost' type='chat'><body>Hello from announcer #[inc_id]</body></message>"
msg=$(printf '%s' "$tmpl" | base64 -w0)
demo_msg=.stack/demo-message.xml
printf '%s' "$tmpl" > "$demo_msg"
cat <<INFO

[run] announcer is up. Endpoints:
  REST API      http://$REST  (POST /v1/announce/channel, /v1/announce/users; GET/DELETE /v1/announcements/{id})
  metrics       http://127.0.0.1:6060/metrics (ingress), :6061 fanout, :6062 sender, :6063 archiver
  Kafka         127.0.0.1:9092   MariaDB 127.0.0.1:3306 (announcer/announcer)   Redis 127.0.0.1:6379
  ejabberd      c2s 127.0.0.1:5222 (STARTTLS), component 127.0.0.1:8889, HTTP API http://127.0.0.1:5280/api$(
	((NODES > 1)) && printf '\n  cluster       %d ejabberd nodes: node N on 127.0.0.N (same ports), one sender each (debug :%s); config %s' \
		"$NODES" "$(for ((n = 2; n <= NODES; n++)); do printf '%s ' "${DEBUG[sender$n]}"; done)" "$CONFIG")
  demo          channel 1 ("demo"): alice, bob (online in Redis), carol (offline); users log in as user/user

Announce to the demo channel (paste this):

  curl -sS -X POST http://$REST/v1/announce/channel -H 'Content-Type: application/json' \\
    -d '{"channel_id": 1, "message": "$msg"}'

Or with the operator CLI (bin/announcer), which follows the announcement with a progress bar:

  bin/announcer send --channel demo --file $demo_msg
  bin/announcer preview --channel demo --file $demo_msg     # who would get it, per node; sends nothing
  bin/announcer list                                        # recent announcements; status ID, cancel ID

Build your own message:  printf '%s' "<message to='%s' ...>...</message>" | base64 -w0
Ctrl-C stops the services.
INFO

# One service dying stops the others: a half-running pipeline would only hide the failure.
set +e
wait -n "${pids[@]}"
rc=$?
say "a service exited (status $rc); stopping the rest"
exit "$rc"
