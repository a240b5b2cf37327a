#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs the system
# packages it needs, then formatting, lints and every test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ds_install_system_packages

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== seams: the sync client, the mount library, the runner and the dataset mirror link no hub server"
for crate in ds-sync ds-fuse ds-runner ds-dataset; do
    if cargo tree --locked -p "$crate" -e normal --prefix none | grep -E '^(ds-hub|object_store) '; then
        echo "$crate must not depend on the hub server (ds-hub) or object_store" >&2
        exit 1
    fi
done
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== starting a real S3-compatible server (moto) for the storage and sync tests"
eval "$(scripts/s3.sh)"
trap 'kill "$DS_S3_PID" 2>/dev/null || true' EXIT
export DS_TEST_REQUIRE_S3=1
echo "== starting a real container engine (podman's Docker API) for the docker executor tests"
eval "$(scripts/podman.sh)"
trap 'kill "$DS_S3_PID" "$DS_PODMAN_PID" 2>/dev/null || true' EXIT
export DS_TEST_REQUIRE_PODMAN=1
# The web UI's tests drive Debian's chromium (installed above), one of
# them JupyterLab on a runner through the hub's relay (a venv from PyPI,
# cached under ~/.cache).
echo "== JupyterLab for the relay's browser test"
eval "$(scripts/jupyter.sh)"
export DS_TEST_REQUIRE_BROWSER=1
echo "== cargo test (unit, integration, property, model-based, crash, sync, fuzz corpora, benches once)"
cargo test --workspace --all-targets --locked
echo "== pjdfstest on a read-write ds mount, against bindfs in the same run"
scripts/pjdfstest.sh
echo "== benchmark smoke: ds and its peers on a 16 MiB corpus (no timing assertions)"
python3 benches/harness.py --smoke --json-out "$CARGO_TARGET_DIR/bench-smoke.json"
