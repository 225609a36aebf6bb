#!/usr/bin/env bash
# Starts the Procfile's three-member cluster (no process manager needed); Ctrl-C stops it.
# Data goes to infra1.keel, infra2.keel, infra3.keel in the current directory.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p server
pids=()
while IFS= read -r line; do
  case "$line" in \#*|"") continue ;; esac
  name=${line%%:*}
  cmd=${line#*: }
  bash -c "exec $cmd" > "$name.log" 2>&1 &
  pids+=($!)
  echo "started $name (pid $!, log $name.log)"
done < Procfile
trap 'kill "${pids[@]}" 2>/dev/null; wait' INT TERM EXIT
echo "clients: 127.0.0.1:2379, 127.0.0.1:22379, 127.0.0.1:32379 (Ctrl-C to stop)"
wait
