#!/usr/bin/env bash
# Start two entities, entity-a and entity-b, federated through one local hub, on one
# command; keep them running (a process that dies is started again) until Ctrl-C.
# The venv on a fresh machine, then `entityd up deploy/pair.toml` (which does the rest)
# with the variables below as its options.
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
# `entityd ps deploy/pair.toml` lists its processes, `entityd down deploy/pair.toml`
# stops it from another terminal (both with --dir "$PAIR_DIR" when that is set).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=$REPO/.venv

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
        echo "start-pair: creating $VENV"
        "${PYTHON:-python3}" -m venv "$VENV"
    fi
    echo "start-pair: installing entityd into $VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$REPO"
    touch "$own_stamp"
fi
export PATH="$VENV/bin:$PATH"

# -- the pair: entityd up, with PAIR_* as its options -----------------------------------

args=("$REPO/deploy/pair.toml")
if [ -n "${PAIR_BASE_PORT:-}" ]; then
    if ! [[ $PAIR_BASE_PORT =~ ^[0-9]+$ ]] || ((PAIR_BASE_PORT < 1 || PAIR_BASE_PORT + 5 > 65535)); then
        fail "PAIR_BASE_PORT must be a port number (up to 65530), got '$PAIR_BASE_PORT'"
    fi
    args+=(--base-port "$PAIR_BASE_PORT")
fi
if [ -n "${PAIR_DURATION:-}" ]; then
    [[ $PAIR_DURATION =~ ^[0-9]+$ ]] || fail "PAIR_DURATION must be whole seconds, got '$PAIR_DURATION'"
    args+=(--duration "$PAIR_DURATION")
fi
if [ -n "${PAIR_ALLOWANCE:-}" ]; then
    [[ $PAIR_ALLOWANCE =~ ^[0-9]+$ ]] || fail "PAIR_ALLOWANCE must be a whole amount, got '$PAIR_ALLOWANCE'"
    args+=(--allowance "$PAIR_ALLOWANCE")
fi
[ -z "${PAIR_DIR:-}" ] || args+=(--dir "$PAIR_DIR")
[ -z "${PAIR_A_PROVIDER:-}" ] || args+=(--provider "entity-a=$PAIR_A_PROVIDER")
[ -z "${PAIR_B_PROVIDER:-}" ] || args+=(--provider "entity-b=$PAIR_B_PROVIDER")
exec entityd up "${args[@]}"
