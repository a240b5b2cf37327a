#!/usr/bin/env bash
# pjdfstest, the POSIX conformance suite filesystem projects use (its Rust
# rewrite, 0.2.0 from crates.io, built from source once and cached), against
# a real `ds mount --rw --allow-other` and, in the same run, against bindfs
# over a plain directory (the yardstick). Fails if ds fails any case not in
# scripts/pjdfstest-known-failures.txt (cases bindfs fails here too), or if
# the run does not finish. Needs root (dummy users, chown, mknod) and a
# built ds (cargo build -p ds-cli). Prints both runs' summaries and times.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
PJD_ROOT="$HOME/.cache/ds-tools/pjdfstest-0.2.0"
PJD="$PJD_ROOT/bin/pjdfstest"
if [ ! -x "$PJD" ]; then
    echo "pjdfstest: building 0.2.0 from source (once; cached in $PJD_ROOT)" >&2
    cargo install --quiet --locked pjdfstest --version 0.2.0 --root "$PJD_ROOT"
fi
DS="$CARGO_TARGET_DIR/debug/ds"
[ -x "$DS" ] || cargo build -q -p ds-cli --bin ds
[ "$(id -u)" -eq 0 ] || { echo "pjdfstest.sh: run as root" >&2; exit 1; }
# The suite switches to three dummy users.
for u in tests pjdfstest; do
    getent group "$u" >/dev/null || groupadd "$u"
    id "$u" >/dev/null 2>&1 || useradd -M -N -g "$u" -s /usr/sbin/nologin "$u"
done
work="$(mktemp -d /tmp/ds-pjdfstest.XXXXXX)"
chmod 755 "$work"
cleanup() {
    fusermount3 -uz "$work/ds" 2>/dev/null || true
    fusermount3 -uz "$work/bindfs" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cat > "$work/pjdfstest.toml" <<'CONF'
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"], ["pjdfstest", "pjdfstest"]]
CONF
mkdir -p "$work/ds" "$work/bindfs" "$work/plain" "$work/secondary"

# Runs the suite in directory $2, output to $work/$1.out; prints a summary.
run() {
    local name=$1 dir=$2 start end
    start=$(date +%s%N)
    (cd "$dir" && "$PJD" -c "$work/pjdfstest.toml" -p "$dir" -s "$work/secondary") \
        > "$work/$name.out" 2>&1 || true
    end=$(date +%s%N)
    if ! grep -q '^Summary:' "$work/$name.out"; then
        tail -40 "$work/$name.out" >&2
        echo "pjdfstest on $name did not finish" >&2
        exit 1
    fi
    grep -E '[[:space:]]FAILED$' "$work/$name.out" | awk '{print $1}' | sort > "$work/$name.fail" || true
    printf 'pjdfstest on %-7s %s (%d ms)\n' "$name:" \
        "$(grep '^Summary:' "$work/$name.out" | sed 's/^Summary: //')" "$(( (end - start) / 1000000 ))"
}

"$DS" --store "$work/store" init >/dev/null
"$DS" --store "$work/store" mount --rw --allow-other --background pjdfstest "$work/ds" >/dev/null
chmod 755 "$work/ds"
run ds "$work/ds"
bindfs "$work/plain" "$work/bindfs"
run bindfs "$work/bindfs"
# What the suite left behind must snapshot (the dirty layer took all of it).
"$DS" --store "$work/store" snapshot --workspace pjdfstest "$work/ds" >/dev/null
"$DS" --store "$work/store" umount "$work/ds"

grep -v '^#' scripts/pjdfstest-known-failures.txt | sort > "$work/known"
unexpected="$(comm -23 "$work/ds.fail" "$work/known")"
if [ -n "$unexpected" ]; then
    echo "ds's read-write mount fails pjdfstest cases bindfs passes:" >&2
    echo "$unexpected" >&2
    for c in $unexpected; do grep -A2 "^$c " "$work/ds.out" >&2 || true; done
    exit 1
fi
echo "pjdfstest: ds fails no case beyond the known list ($(wc -l < "$work/ds.fail") failed; bindfs $(wc -l < "$work/bindfs.fail"))"
