#!/usr/bin/env bash
# The main job on embedded defaults: build ds, make a sample workspace,
# snapshot it, change it, snapshot again, diff, restore and verify; then
# then `ds up` (a hub with the web UI and a runner), push the workspace to
# it and clone it into a second store, and `ds run` a task that records a
# run, shown by `ds runs` and the REST API the web UI uses.
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

# The platform on this machine: `ds up` starts a hub (storage in its data
# directory; it serves gRPC, the REST API and the web UI on one address) and
# a runner, and saves the hub as this store's default remote.
set +x
"$DS" up --background --listen 127.0.0.1:0 --data "$demo/up" --executor process | tee "$demo/up.txt"
trap '"$DS" down --data "$demo/up" || true' EXIT
url=$(grep -o "http://[0-9.:]*" "$demo/up.txt" | head -1)
export DS_TOKEN="$(cat "$demo/up/hub/admin.token")"
set -x
"$DS" push demo --json
DS_STORE="$demo/clone" "$DS" clone demo --hub "$url"
DS_STORE="$demo/clone" "$DS" log demo
DS_STORE="$demo/clone" "$DS" verify

# A task: the runner pulls the workspace, mounts it as the workload's home,
# runs the command, snapshots what it wrote and pushes it back. The
# workload records a run by printing its metadata between markers; the
# runner snapshots the workspace at that moment with the run attached.
"$DS" run -w demo --executor process -- sh -c 'wc -l data/rows.csv; echo "accuracy 0.93" > models/metrics.txt
echo "[[DS-RUN:demo-1]]{\"parameters\":{\"rows\":1000},\"metrics\":{\"accuracy\":0.93},\"inputs\":[\"data/rows.csv\"],\"outputs\":[\"models/metrics.txt\"],\"labels\":{\"model\":\"demo-model\"}}[[/DS-RUN:demo-1]]"'
"$DS" tasks
"$DS" runners
"$DS" runs demo
DS_STORE="$demo/clone" "$DS" pull demo --hub "$url"
DS_STORE="$demo/clone" "$DS" cat demo models/metrics.txt
DS_STORE="$demo/clone" "$DS" runs demo
DS_STORE="$demo/clone" "$DS" models
DS_STORE="$demo/clone" "$DS" provenance model:demo-model
set +x
# The same run through the REST API the web UI uses (the token is not echoed).
echo "+ curl -H 'Authorization: Bearer \$DS_TOKEN' $url/api/v1/workspaces/demo/runs"
curl -sS -H "Authorization: Bearer $DS_TOKEN" "$url/api/v1/workspaces/demo/runs" | head -c 300; echo
echo "ds demo: the run in the web UI: $url/#/w/demo/runs (log in with the token in $demo/up/hub/admin.token)"
echo "ds demo: store, workspace, restored copy, clone and ds up's data are in $demo; ds up stops now"
echo "ds demo: to keep the platform running, start it yourself: ds up"
