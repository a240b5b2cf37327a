#!/usr/bin/env bash
# The main job on embedded defaults: build ds, make a sample workspace,
# snapshot it, change it, snapshot again, diff, restore and verify.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ds_install_system_packages
cargo build --locked -p ds-cli
DS="$CARGO_TARGET_DIR/debug/ds"

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
set +x
echo "ds demo: store, workspace and restored copy are in $demo"
