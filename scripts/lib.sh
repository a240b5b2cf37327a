# Shared by the scripts in this folder: system packages and the build directory.
# Sourced, not run.

# One persistent target directory outside the checkout, so RocksDB's C++
# (≈13 minutes on 2 cores) compiles once per machine, not once per clone.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ds-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Installs the Debian packages ds needs to build and test, when missing:
# a C/C++ toolchain and libclang (RocksDB's bindings), fuse3 (FUSE mounts).
ds_install_system_packages() {
    local need=()
    command -v cc >/dev/null || need+=(build-essential)
    command -v c++ >/dev/null || need+=(build-essential)
    command -v pkg-config >/dev/null || need+=(pkg-config)
    [ -e /usr/lib/llvm-14/lib/libclang.so ] || ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || need+=(libclang-dev)
    ls /usr/lib/llvm-*/lib/clang/*/include/stdbool.h >/dev/null 2>&1 || need+=(libclang-dev)
    command -v fusermount3 >/dev/null || need+=(fuse3)
    command -v mkfifo >/dev/null || need+=(coreutils)
    command -v python3 >/dev/null || need+=(python3)
    command -v curl >/dev/null || need+=(curl)
    command -v openssl >/dev/null || need+=(openssl)
    # Real workloads the FUSE tests run on a mount.
    command -v git >/dev/null || need+=(git)
    command -v sqlite3 >/dev/null || need+=(sqlite3)
    command -v tar >/dev/null || need+=(tar)
    # POSIX home directories: rsync -aHAX is the yardstick of the round
    # trip tests, bindfs pjdfstest's (scripts/pjdfstest.sh).
    command -v rsync >/dev/null || need+=(rsync)
    command -v bindfs >/dev/null || need+=(bindfs)
    python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
    # The container executor's tests: podman serving the Docker API (with
    # runc), and a static busybox to build the test image from.
    command -v podman >/dev/null || need+=(podman)
    command -v runc >/dev/null || need+=(runc)
    [ -x /bin/busybox ] || need+=(busybox-static)
    # The web UI's browser test: Debian's headless chromium, driven through
    # chromedriver's WebDriver protocol (no downloads at test time).
    command -v chromium >/dev/null || need+=(chromium)
    command -v chromedriver >/dev/null || need+=(chromium-driver)
    if [ ${#need[@]} -gt 0 ]; then
        echo "ds: installing system packages: ${need[*]}" >&2
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    if ! command -v cargo >/dev/null; then
        echo "ds: Rust (cargo ≥ 1.89) is required; install it with rustup (https://rustup.rs)" >&2
        exit 1
    fi
    if command -v rustup >/dev/null && ! { cargo fmt --version && cargo clippy --version; } >/dev/null 2>&1; then
        rustup component add rustfmt clippy
    fi
}
