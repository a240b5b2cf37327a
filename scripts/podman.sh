#!/usr/bin/env bash
# Starts a throwaway rootful podman serving the Docker Engine API on a
# private unix socket, for the container-executor tests, and imports a test
# image from Debian's static busybox (no registry is reachable or needed).
# podman 4.3 here needs runc (crun fails on hybrid cgroups) and cgroupfs.
#
# Usage: eval "$(scripts/podman.sh)"  -> exports DOCKER_HOST, DS_TEST_IMAGE,
#                                        CONTAINERS_* and DS_PODMAN_PID
# Stop:  kill "$DS_PODMAN_PID"
set -euo pipefail
STATE=${DS_PODMAN_STATE:-${TMPDIR:-/tmp}/ds-podman}
mkdir -p "$STATE"/{storage,run,tmp,libpod,volumes,networks}
cat >"$STATE/containers.conf" <<EOT
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$STATE/libpod"
volume_path = "$STATE/volumes"
[network]
network_config_dir = "$STATE/networks"
EOT
cat >"$STATE/storage.conf" <<EOT
[storage]
driver = "overlay"
graphroot = "$STATE/storage"
runroot = "$STATE/run"
EOT
export CONTAINERS_CONF=$STATE/containers.conf CONTAINERS_STORAGE_CONF=$STATE/storage.conf TMPDIR=$STATE/tmp
IMAGE=localhost/ds-test-busybox:1
if ! podman image exists "$IMAGE"; then
  root=$(mktemp -d "$STATE/tmp/rootfs.XXXX")
  mkdir -p "$root"/{bin,tmp,proc,sys,dev,etc,home}
  cp /bin/busybox "$root/bin/busybox"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"; done
  echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
  tar -C "$root" -cf "$STATE/busybox.tar" . && rm -rf "$root"
  podman import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' "$STATE/busybox.tar" "$IMAGE" >&2
fi
SOCK=$STATE/podman.sock
rm -f "$SOCK"
podman system service --time=0 "unix://$SOCK" >"$STATE/service.log" 2>&1 &
PID=$!
for _ in $(seq 1 200); do
  curl -sf --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { echo "podman service died; see $STATE/service.log" >&2; exit 1; }
  sleep 0.1
done
cat <<EOT
export DS_PODMAN_PID=$PID
export DOCKER_HOST=unix://$SOCK DS_TEST_IMAGE=$IMAGE
export CONTAINERS_CONF=$CONTAINERS_CONF CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF
EOT
