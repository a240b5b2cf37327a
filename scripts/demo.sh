#!/usr/bin/env bash
# The main job on embedded defaults: build ds, make a sample workspace,
# snapshot it, change it, snapshot again, diff, restore and verify; then
# start a hub, push the workspace to it and clone it into a second store;
# then start a runner and run a task in the workspace with `ds run`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ds_install_system_packages
# The same selection as scripts/test.sh, so RocksDB compiles once for both.
cargo build --locked --workspace --all-targets
# Leave an installed `ds` on the user's PATH (a copy of the binary just
# built: `cargo install` would build RocksDB again in another profile).
bin_dir="$HOME/.local/bin"
case ":$PATH:" in *":$HOME/.cargo/bin:"*) [ -d "$HOME/.cargo/bin" ] && bin_dir="$HOME/.cargo/bin" ;; esac
mkdir -p "$bin_dir"
install -m 0755 "$CARGO_TARGET_DIR/debug/ds" "$bin_dir/ds.tmp"
mv -f "$bin_dir/ds.tmp" "$bin_dir/ds"
DS="$bin_dir/ds"
echo "ds: installed $DS"
case ":$PATH:" in
    *":$bin_dir:"*) ;;
    *) echo "ds: note: $bin_dir is not on your PATH; add it: export PATH=\"$bin_dir:\$PATH\"" ;;
esac

demo="$(mktemp -d "${TMPDIR:-/tmp}/ds-demo.XXXXXX")"
export DS_STORE="$demo/store"
work="$demo/workspace"
mkdir -p "$work/src" "$work/data" "$work/models"
printf 'import numpy as np\nprint("training")\n' > "$work/src/train.py"
seq 1 200000 | awk '{print $1","$1*3","$1%7}' > "$work/data/rows.csv"
head -c 64M /dev/urandom > "$work/models/checkpoint.bin"

set -x
"$DS" init
"$DS" snapshot "$work" --workspace demo -m "first"
printf 'print("evaluating")\n' >> "$work/src/train.py"
seq 200001 202000 | awk '{print $1","$1*3","$1%7}' >> "$work/data/rows.csv"
dd if=/dev/urandom of="$work/models/checkpoint.bin" bs=1M count=1 seek=20 conv=notrunc status=none
"$DS" snapshot "$work" --workspace demo -m "second"
"$DS" log demo
"$DS" diff demo~1 demo
"$DS" restore demo~1 "$demo/restored"
"$DS" verify

# Sync: a hub on loopback (storage in its data dir), push, clone elsewhere.
set +x
"$DS" hub --listen 127.0.0.1:0 --data "$demo/hub" 2> "$demo/hub.log" &
hub_pid=$!
runner_pid=""
trap 'kill $runner_pid $hub_pid 2>/dev/null || true; wait $runner_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do grep -q "listening on" "$demo/hub.log" 2>/dev/null && break; sleep 0.1; done
url=$(grep -o "http://[0-9.:]*" "$demo/hub.log")
export DS_TOKEN="$(cat "$demo/hub/admin.token")"
set -x
"$DS" push demo --hub "$url" --json
DS_STORE="$demo/clone" "$DS" clone demo --hub "$url"
DS_STORE="$demo/clone" "$DS" log demo
DS_STORE="$demo/clone" "$DS" verify

# Tasks: a runner (it connects out to the hub), then `ds run` in the
# workspace: the runner pulls it, mounts it as the workload's home, runs
# the command, snapshots what it wrote and pushes it back.
runner_token=$("$DS" token --runner demo-runner --hub "$url")
set +x
"$DS" runner --hub "$url" --token "$runner_token" --name demo-runner \
    --cache "$demo/runner" 2> "$demo/runner.log" &
runner_pid=$!
for _ in $(seq 1 100); do grep -q "connected to" "$demo/runner.log" 2>/dev/null && break; sleep 0.1; done
set -x
# The workload records a run by printing its metadata between markers;
# the runner snapshots the workspace at that moment with the run attached.
"$DS" run -w demo --hub "$url" -- sh -c 'wc -l data/rows.csv; echo "accuracy 0.93" > models/metrics.txt
echo "[[DS-RUN:demo-1]]{\"parameters\":{\"rows\":1000},\"metrics\":{\"accuracy\":0.93},\"inputs\":[\"data/rows.csv\"],\"outputs\":[\"models/metrics.txt\"],\"labels\":{\"model\":\"demo-model\"}}[[/DS-RUN:demo-1]]"'
"$DS" tasks --hub "$url"
"$DS" runners --hub "$url"
"$DS" runs demo --hub "$url"
DS_STORE="$demo/clone" "$DS" pull demo --hub "$url"
DS_STORE="$demo/clone" "$DS" cat demo models/metrics.txt
DS_STORE="$demo/clone" "$DS" runs demo
DS_STORE="$demo/clone" "$DS" models
DS_STORE="$demo/clone" "$DS" provenance model:demo-model
set +x
kill -TERM "$runner_pid"; wait "$runner_pid" || true; runner_pid=""
echo "ds demo: store, workspace, restored copy, hub, clone and runner cache are in $demo"
