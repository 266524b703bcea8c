#!/usr/bin/env bash
# Start two entities, entity-a and entity-b, federated through one local hub, on one
# command; keep them running (a process that dies is started again) until Ctrl-C.
#
#   ./deploy/start-pair.sh
#
# Environment (all optional):
#   PAIR_DIR           where the hub and both data dirs live (default: REPO/.pair)
#   PAIR_BASE_PORT     first of six ports (default 14220): hub clients, hub leafnodes,
#                      entity-a's NATS, entity-b's NATS, the demo models of a and b
#   PAIR_A_PROVIDER    entity-a's LLM provider (default moonshot, key MOONSHOT_API_KEY)
#   PAIR_B_PROVIDER    entity-b's LLM provider (default openrouter, key OPENROUTER_API_KEY)
#                      "demo" runs that entity on the demo model even when a key is set
#   PAIR_DURATION      stop by itself this many seconds after "pair ready" (for tests)
#   PAIR_ALLOWANCE     what the hub's treasurer mints to each entity once (default 1000)
#   PYTHON             the python3 that makes .venv on a fresh machine (default python3)
# An entity whose provider's key is not in the environment runs on the scripted demo
# model (actors/llm/demo.py), which is not a model and says so in every answer.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=$REPO/.venv
ENTITIES=(entity-a entity-b)

say() { echo "start-pair: $*"; }
fail() { echo "start-pair: $*" >&2; exit 1; }

# -- a fresh machine: the venv, as tests/run makes it (without the test extra) -------------

# tests/run's stamp says "installed, with the test extra"; ours only "installed", so that
# tests/run still adds its extra to a venv this script made.
stamps=("$VENV/.entityd-installed" "$VENV/.entityd-installed-runtime")
own_stamp=${stamps[1]}
needs_install() {
    local stamp stamped=0
    [ -x "$VENV/bin/entityd" ] || return 0
    for stamp in "${stamps[@]}"; do
        [ -f "$stamp" ] || continue
        stamped=1
        if [ ! "$REPO/pyproject.toml" -nt "$stamp" ]; then return 1; fi
    done
    # Stamped but older than pyproject.toml: the dependencies may have changed. Not
    # stamped at all: installed by hand, so use it as it is.
    ((stamped))
}
if needs_install; then
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        "${PYTHON:-python3}" -m venv "$VENV"
    fi
    say "installing entityd into $VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$REPO"
    touch "$own_stamp"
fi
export PATH="$VENV/bin:$PATH"

# -- layout -------------------------------------------------------------------------------

BASE=${PAIR_BASE_PORT:-14220}
if ! [[ $BASE =~ ^[0-9]+$ ]] || ((BASE < 1 || BASE + 5 > 65535)); then
    fail "PAIR_BASE_PORT must be a port number (up to 65530), got '$BASE'"
fi
DURATION=${PAIR_DURATION:-}
if ! [[ -z $DURATION || $DURATION =~ ^[0-9]+$ ]]; then
    fail "PAIR_DURATION must be whole seconds, got '$DURATION'"
fi

PAIR_DIR=${PAIR_DIR:-$REPO/.pair}
mkdir -p "$PAIR_DIR"
PAIR_DIR=$(cd "$PAIR_DIR" && pwd)  # configs hold absolute paths

HUB_DIR=$PAIR_DIR/hub
HUB_PORT=$BASE
HUB_LEAF_PORT=$((BASE + 1))
declare -A NATS_PORT=([entity-a]=$((BASE + 2)) [entity-b]=$((BASE + 3)))
declare -A DEMO_PORT=([entity-a]=$((BASE + 4)) [entity-b]=$((BASE + 5)))
declare -A PEER=([entity-a]=entity-b [entity-b]=entity-a)
config_of() { echo "$PAIR_DIR/$1/entityd.toml"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Another pair (or anything else) on our ports would answer in our place: refuse early.
for port in $(seq "$BASE" $((BASE + 5))); do
    if port_open "$port"; then
        fail "port $port is in use (another pair running?); set PAIR_BASE_PORT to a free range"
    fi
done

# -- first run: data dirs, keys and the hub's users; later runs keep them -----------------

# toml_set FILE SECTION KEY VALUE: KEY = VALUE in [SECTION]. It replaces the key's line
# there (keeping its comment), else goes right under the header, else into a new section
# at the end. Running it again changes nothing, so the settings below are applied on
# every run and follow PAIR_BASE_PORT.
toml_set() {
    local file=$1 section="[$2]" key=$3 value=$4
    # Two passes over the file: the first only learns whether the key is there.
    awk -v section="$section" -v key="$key" -v value="$value" '
        /^\[/ { in_section = ($0 == section) }
        function is_key() { return in_section && index($0, key " =") == 1 }
        NR == FNR { if (is_key()) present = 1; next }
        is_key() { sub(/= [^#]*[^# ]/, "= " value); print; next }
        { print }
        $0 == section { seen = 1; if (!present) print key " = " value }
        END { if (!seen) { print ""; print section; print key " = " value } }
    ' "$file" "$file" >"$file.tmp"
    mv "$file.tmp" "$file"
}

# The hub's treasurer makes the LEDGER stream and mints the pair's starting allowance; its
# mint key is in both entities' [mint_keys] (README, "The economy").
TREASURY=$HUB_DIR/treasury
mkdir -p "$TREASURY"
TREASURER_NKEY=$(entityd federation treasurer --data-dir "$TREASURY" \
    | sed -n 's/^# public nkey: //p')
[ -n "$TREASURER_NKEY" ] || fail "no public nkey from 'entityd federation treasurer'"
[ -f "$TREASURY/mint.key" ] || entityd keygen "$TREASURY/mint.key" >/dev/null
MINT_KEY=$(python - "$TREASURY/mint.key" <<'PY'
import sys
from pathlib import Path
from entityd import identity
print(bytes(identity.read_key(Path(sys.argv[1])).verify_key).hex())
PY
)

declare -A HUB_NKEY
for name in "${ENTITIES[@]}"; do
    data=$PAIR_DIR/$name
    if [ ! -f "$(config_of "$name")" ]; then
        say "first run: creating $name in $data"
        # (without init's "run: entityd run ..." hint: this script runs it)
        entityd init "$name" --data-dir "$data" --nats-port "${NATS_PORT[$name]}" | sed '/^run:/d'
    fi
    # hub-user makes the hub login key once and shows the same public key afterwards.
    HUB_NKEY[$name]=$(entityd federation hub-user "$name" --data-dir "$data" \
        | sed -n 's/^# public nkey: //p')
    [ -n "${HUB_NKEY[$name]}" ] || fail "no public nkey from 'entityd federation hub-user $name'"
    config=$(config_of "$name")
    toml_set "$config" nats port "${NATS_PORT[$name]}"
    toml_set "$config" nats hub_url "\"nats-leaf://127.0.0.1:$HUB_LEAF_PORT\""
    # Frequent heartbeats so each sees the other within seconds of starting.
    toml_set "$config" peers heartbeat_interval 2.0
    # The pair trusts each other fully; [trust] is a table, which no ENTITYD_* variable sets.
    toml_set "$config" trust "${PEER[$name]}" '["talk", "report", "delegate", "wake", "restart"]'
    toml_set "$config" mint_keys treasury "\"$MINT_KEY\""
done

mkdir -p "$HUB_DIR"
entityd federation hub-conf \
    --entity "entity-a=${HUB_NKEY[entity-a]}" --entity "entity-b=${HUB_NKEY[entity-b]}" \
    --store-dir "$HUB_DIR/jetstream" --host 127.0.0.1 --port "$HUB_PORT" \
    --leaf-host 127.0.0.1 --leaf-port "$HUB_LEAF_PORT" --treasurer "$TREASURER_NKEY" \
    >"$HUB_DIR/hub.conf"

# -- models: a real provider when its key is here, else the demo model --------------------

declare -A PROVIDER=(
    [entity-a]=${PAIR_A_PROVIDER:-moonshot}
    [entity-b]=${PAIR_B_PROVIDER:-openrouter}
)
declare -A USES_DEMO LLM_ENV
key_variable() {  # the variable holding a provider's key (empty: it needs none)
    # Asked of entityd's own presets, so the script never disagrees with the daemon.
    python - "$1" <<'PY'
import sys
from actors.llm.providers import PRESETS
if sys.argv[1] not in PRESETS:
    sys.exit(f"unknown provider {sys.argv[1]!r}; known: {', '.join(PRESETS)}, demo")
print(PRESETS[sys.argv[1]].key_env)
PY
}
for name in "${ENTITIES[@]}"; do
    provider=${PROVIDER[$name]}
    USES_DEMO[$name]=0
    if [ "$provider" = demo ] || [ "$provider" = scripted ]; then
        say "$name: running it on the scripted demo model (not a model), as asked"
        USES_DEMO[$name]=1
        continue
    fi
    key_var=$(key_variable "$provider") || fail "$name: cannot use provider '$provider'"
    # Tested by name only (${!key_var}): the key itself is never printed or written.
    if [ -n "$key_var" ] && [ -z "${!key_var:-}" ]; then
        say "$name: no $key_var in the environment;" \
            "running it on the scripted demo model (not a model)"
        USES_DEMO[$name]=1
    else
        say "$name: model provider $provider${key_var:+ (key from \$$key_var)}"
        LLM_ENV[$name]="ENTITYD_LLM_PROVIDER=$provider"
    fi
done

# -- processes ------------------------------------------------------------------------------

# One entry per process the pair needs: its pid, a label and how to start it.
declare -A PID LABEL STARTER
PROCS=()
add_proc() { PROCS+=("$1"); LABEL[$1]=$2; STARTER[$1]=$3; }

# Every process runs in a session of its own, so Ctrl-C in the terminal reaches only this
# script, which then stops them in order: the daemons first, while their embedded
# nats-servers (which would otherwise get the Ctrl-C too and die under the draining
# daemon), their models and the hub are still up. setsid execs in place (no fork), so $!
# is still the process's pid; a command, not a function, for the same reason.
DETACHED=()
command -v setsid >/dev/null && DETACHED=(setsid)

start_hub() {
    "${DETACHED[@]}" nats-server -c "$HUB_DIR/hub.conf" </dev/null >>"$HUB_DIR/hub.log" 2>&1 &
    PID[hub]=$!
}

start_demo() {  # start_demo NAME
    "${DETACHED[@]}" python -m actors.llm.scripted --demo --port "${DEMO_PORT[$1]}" \
        </dev/null >>"$PAIR_DIR/$1/demo-model.log" 2>&1 &
    PID[demo-$1]=$!
}

start_daemon() {  # start_daemon NAME
    local name=$1 llm
    if [ "${USES_DEMO[$name]}" = 1 ]; then
        llm=(ENTITYD_LLM_PROVIDER=scripted
             "ENTITYD_LLM_BASE_URL=http://127.0.0.1:${DEMO_PORT[$name]}/v1")
    else
        llm=("${LLM_ENV[$name]}")
    fi
    # JSON logs whatever the caller's terminal: the readiness check reads them.
    LOG_OFFSET[$name]=$(stat -c %s "$PAIR_DIR/$name/entityd.log" 2>/dev/null || echo 0)
    "${DETACHED[@]}" env ENTITYD_LOG_FORMAT=json "${llm[@]}" \
        entityd run --config "$(config_of "$name")" \
        </dev/null >>"$PAIR_DIR/$name/entityd.log" 2>&1 &
    PID[$name]=$!
    echo "${PID[$name]}" >"$PAIR_DIR/$name/entityd.pid"
}

alive() { [ -n "${PID[$1]:-}" ] && kill -0 "${PID[$1]}" 2>/dev/null; }
started() { [ -n "${PID[$1]:-}" ]; }

# wait_until WHAT SECONDS PROC TEST...: poll TEST until it passes; fail if PROC dies first.
wait_until() {
    local what=$1 seconds=$2 proc=$3
    shift 3
    local tries=$((seconds * 10))
    until "$@"; do
        alive "$proc" || fail "${LABEL[$proc]} exited before $what; see its log"
        ((tries-- > 0)) || fail "${LABEL[$proc]}: no $what within $seconds s; see its log"
        sleep 0.1
    done
}

# The daemon logs entityd_ready once its actors serve. Only what it logged since its
# latest start counts, not an older run's line in the same log.
declare -A LOG_OFFSET
ready() {
    local since=$((LOG_OFFSET[$1] + 1))
    [ "$(tail -c +"$since" "$PAIR_DIR/$1/entityd.log" 2>/dev/null | grep -c entityd_ready)" -gt 0 ]
}

# stop_procs PROC...: TERM them, wait up to 15 s in all, then KILL what is left.
stop_procs() {
    local proc tries=150
    for proc in "$@"; do
        if alive "$proc"; then kill -TERM "${PID[$proc]}" 2>/dev/null || true; fi
    done
    for proc in "$@"; do
        started "$proc" || continue
        while alive "$proc" && ((tries-- > 0)); do sleep 0.1; done
        if alive "$proc"; then
            say "${LABEL[$proc]} did not stop within 15 s; killing it"
            kill -KILL "${PID[$proc]}" 2>/dev/null || true
        fi
        wait "${PID[$proc]}" 2>/dev/null || true
    done
}

stopping=0
shutdown() {
    ((stopping)) && return
    stopping=1
    # Nothing may cut the shutdown short: not a second Ctrl-C, not a failing command,
    # not a closed terminal (echo to it fails, or raises SIGPIPE on a pipe).
    trap '' INT TERM HUP PIPE
    set +e
    say "stopping"
    # Daemons first, so they drain while their models and the hub are still there.
    stop_procs "${ENTITIES[@]}"
    rm -f "$PAIR_DIR"/entity-*/entityd.pid
    local rest=() proc
    for proc in "${PROCS[@]}"; do
        if [[ $proc == hub || $proc == demo-* ]]; then rest+=("$proc"); fi
    done
    stop_procs "${rest[@]}"
    if [ -n "${ticker:-}" ]; then kill "$ticker" 2>/dev/null || true; fi
    echo "pair stopped"
}
# Whatever ends the script (a signal, PAIR_DURATION, an error in setup), nothing it
# started outlives it. A signal is a clean stop: exit 0.
trap shutdown EXIT
trap 'exit 0' INT TERM HUP

add_proc hub "hub" start_hub
for name in "${ENTITIES[@]}"; do
    if [ "${USES_DEMO[$name]}" = 1 ]; then
        add_proc "demo-$name" "demo model of $name" "start_demo $name"
    fi
done
for name in "${ENTITIES[@]}"; do
    add_proc "$name" "$name" "start_daemon $name"
done

say "starting the hub on 127.0.0.1:$HUB_PORT (leafnodes :$HUB_LEAF_PORT)"
start_hub
wait_until "listening" 20 hub port_open "$HUB_PORT"
economy() {  # economy COMMAND ARGS...: as the hub's treasurer
    entityd economy "$1" "${@:2}" --hub "nats://127.0.0.1:$HUB_PORT" --data-dir "$TREASURY"
}
economy init >/dev/null || fail "could not make the LEDGER stream on the hub"
for name in "${ENTITIES[@]}"; do
    # Once per entity and pair dir: the mint's id is the same on every start (retried).
    allowance_id=$(printf 'allowance/%s' "$name" | sha256sum | cut -c1-32)
    minted=$(economy mint "$name" "${PAIR_ALLOWANCE:-1000}" --key "$TREASURY/mint.key" \
        --memo "the pair's starting allowance" --id "$allowance_id") \
        || fail "could not mint $name's starting allowance"
    say "$name's allowance: $minted"
done
for name in "${ENTITIES[@]}"; do
    if [ "${USES_DEMO[$name]}" = 1 ]; then
        start_demo "$name"
        wait_until "listening" 20 "demo-$name" port_open "${DEMO_PORT[$name]}"
    fi
done
for name in "${ENTITIES[@]}"; do
    say "starting $name"
    start_daemon "$name"
done
for name in "${ENTITIES[@]}"; do
    wait_until "entityd_ready" 60 "$name" ready "$name"
done

a=$(config_of entity-a)
cat <<EOF

Reach and watch the pair (the venv's bin must be on PATH: export PATH="$VENV/bin:\$PATH"):
  entityctl --config $a status
  entityctl --config $a peers
  entityctl --config $a talk entity-b "hi"
  entityctl --config $a watch
  (entity-b likewise with --config $(config_of entity-b))
Logs:
  $PAIR_DIR/entity-a/entityd.log
  $PAIR_DIR/entity-b/entityd.log
  $HUB_DIR/hub.log
Ctrl-C stops the pair.
EOF
echo "pair ready"

# -- supervise: start again whatever died ------------------------------------------------------
# At once the first time; one that keeps dying within QUICK_DEATH_S of its start waits
# 2, 4, ... up to 32 s between attempts, so a broken config does not spin.

QUICK_DEATH_S=30
ready_at=$SECONDS
declare -A RESTARTING  # daemons started again and not yet ready
declare -A FAILS STARTED_AT DUE
for proc in "${PROCS[@]}"; do FAILS[$proc]=0; STARTED_AT[$proc]=$SECONDS; done
while [ -z "$DURATION" ] || ((SECONDS - ready_at < DURATION)); do
    for proc in "${PROCS[@]}"; do
        alive "$proc" && continue
        if [ -z "${DUE[$proc]:-}" ]; then
            code=0
            wait "${PID[$proc]}" 2>/dev/null || code=$?
            if ((SECONDS - STARTED_AT[$proc] < QUICK_DEATH_S)); then
                FAILS[$proc]=$((FAILS[$proc] + 1))
            else
                FAILS[$proc]=1
            fi
            exponent=$((FAILS[$proc] - 1 < 5 ? FAILS[$proc] - 1 : 5))
            delay=$((FAILS[$proc] > 1 ? 1 << exponent : 0))
            DUE[$proc]=$((SECONDS + delay))
            if ((delay)); then
                say "${LABEL[$proc]} exited (code $code); restarting in $delay s" \
                    "(it died ${FAILS[$proc]} times in a row within $QUICK_DEATH_S s of starting)"
            else
                say "${LABEL[$proc]} exited (code $code); restarting"
            fi
        fi
        ((SECONDS >= DUE[$proc])) || continue
        unset "DUE[$proc]"
        ${STARTER[$proc]}
        STARTED_AT[$proc]=$SECONDS
        if [[ $proc == entity-* ]]; then RESTARTING[$proc]=1; fi
    done
    for name in "${!RESTARTING[@]}"; do
        if ready "$name"; then
            say "$name is ready again"
            unset "RESTARTING[$name]"
        fi
    done
    # Sleep in the background so that a signal ends the `wait` at once (bash runs traps
    # only between commands, and `wait` is one it interrupts). A child that dies is reaped
    # during this wait; bash's own "Killed ..." notice goes to /dev/null, ours is above.
    sleep 1 &
    ticker=$!
    wait "$ticker" 2>/dev/null || true
done
say "PAIR_DURATION of $DURATION s is over"
