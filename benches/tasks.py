#!/usr/bin/env python3
"""Task benchmarks: how long `ds run` takes to start a workload and to bring
its results home, beside the floor measured in the same run.

Starts a real `ds hub` and `ds runner` on loopback, makes a workspace of
--size bytes (random checkpoints, so nothing deduplicates), pushes it, and
measures:

  start (warm)   `ds run` until the workload's first output line, the
                 workspace already in the runner's cache; floor: starting
                 the same command directly (process executor) or with
                 `podman run` (docker executor, when DOCKER_HOST and
                 DS_TEST_IMAGE are set, see scripts/podman.sh)
  start (cold)   the same on a fresh runner cache: the whole workspace is
                 pulled before the workload starts (no lazy start yet)
  finish         from the workload's last output line to the task's end
                 (final snapshot of the mount + unmount + push + Done),
                 after the workload changed --change bytes of one checkpoint
  dataset        a --dataset-size dataset (4 random files) mounted with
                 `ds run --dataset` on a fresh runner cache: the start (its
                 trees fetched, no data), one file read whole (its chunks
                 fetched as read, with read-ahead), the same file in the
                 next task (kept in the runner's cache by the first) and one
                 4 KiB read in the middle of another; beside them `ds clone` of the whole
                 dataset (the eager alternative) and a local read of the
                 same file with the page cache dropped (when root may)

Python 3 standard library only; prints a table and, with --json-out, JSON.
No threshold is asserted anywhere: these machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MiB = 1 << 20


def ds_bin() -> str:
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/ds-target"))
    return os.environ.get("DS_BIN", os.path.join(target, "debug", "ds"))


class Proc:
    """A background ds process whose stderr is collected."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.p = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.p.stderr
        for line in self.p.stderr:
            self.lines.append(line)

    def wait_for(self, needle: str, timeout: float = 60) -> str:
        t = time.time()
        while time.time() - t < timeout:
            for line in list(self.lines):
                if needle in line:
                    return line
            if self.p.poll() is not None:
                raise SystemExit(f"process exited early:\n{''.join(self.lines)}")
            time.sleep(0.05)
        raise SystemExit(f"timed out waiting for {needle!r}:\n{''.join(self.lines)}")

    def stop(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            self.p.kill()


def start_hub(ds: str, tmp: str, env: dict[str, str]) -> tuple[Proc, str, str]:
    """A `ds hub` on loopback with its data under TMP/hub: (process, url, admin token)."""
    hub = Proc([ds, "hub", "--listen", "127.0.0.1:0", "--data", os.path.join(tmp, "hub")], env)
    try:
        url = hub.wait_for("listening on").split("listening on ")[1].strip()
        admin = open(os.path.join(tmp, "hub", "admin.token")).read().strip()
    except BaseException:
        hub.stop()
        raise
    return hub, url, admin


def runner_token(ds: str, env: dict[str, str]) -> str:
    """A runner token for runner `bench`, made with the admin token in ENV."""
    return subprocess.run([ds, "token", "--runner", "bench"], env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def start_runner(ds: str, url: str, token: str, cache: str, env: dict[str, str],
                 extra: list[str] | None = None) -> Proc:
    """`ds runner` named bench on URL with its cache at CACHE, once connected."""
    r = Proc([ds, "runner", "--hub", url, "--token", token, "--name", "bench",
              "--cache", cache] + (extra or []), env)
    r.wait_for("connected to")
    return r


def first_line_seconds(cmd: list[str], env: dict[str, str]) -> float:
    """Seconds from starting `cmd` to its first stdout line; waits for its end."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert p.stdout
    p.stdout.readline()
    dt = time.perf_counter() - t
    p.stdout.read()
    if p.wait() != 0:
        raise SystemExit(f"{cmd} failed")
    return dt


def dataset_rows(ds: str, tmp: str, env: dict[str, str], url: str, token: str,
                 size_mib: int) -> dict[str, float]:
    """The dataset rows (see the module's doc)."""
    src = os.path.join(tmp, "dataset")
    os.makedirs(src)
    per = size_mib // 4
    for i in range(4):
        with open(os.path.join(src, f"f{i}.bin"), "wb") as f:
            for _ in range(per):
                f.write(os.urandom(MiB))
    subprocess.run([ds, "snapshot", src, "-w", "data"], env=env, check=True, capture_output=True)
    subprocess.run([ds, "push", "data"], env=env, check=True, capture_output=True)
    out: dict[str, float] = {}
    r = start_runner(ds, url, token, os.path.join(tmp, "cache-ds"), env)
    try:
        out["ds_start_s"] = first_line_seconds(
            [ds, "run", "-w", "w", "--dataset", "data:d", "--", "echo", "first"], env)
        script = ("a=$(date +%s.%N); cat d/f0.bin > /dev/null; b=$(date +%s.%N); "
                  f"dd if=d/f1.bin of=/dev/null bs=4096 count=1 skip={per * 128} status=none; "
                  "c=$(date +%s.%N); echo $a $b $c")
        o = subprocess.run([ds, "run", "-w", "w", "--dataset", "data:d", "--", "sh", "-c", script],
                           env=env, check=True, capture_output=True, text=True).stdout
        a, b, c = (float(x) for x in o.split()[-3:])
        out["ds_read_s"], out["ds_seek_s"] = b - a, c - b
        # The next task reads what the first one fetched from the cache.
        again = "a=$(date +%s.%N); cat d/f0.bin > /dev/null; b=$(date +%s.%N); echo $a $b"
        o = subprocess.run([ds, "run", "-w", "w", "--dataset", "data:d", "--", "sh", "-c", again],
                           env=env, check=True, capture_output=True, text=True).stdout
        a, b = (float(x) for x in o.split()[-2:])
        out["ds_read_again_s"] = b - a
    finally:
        r.stop()
    dropped = False
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        dropped = True
    except OSError:
        pass
    t = time.perf_counter()
    with open(os.path.join(src, "f0.bin"), "rb") as f:
        while f.read(8 * MiB):
            pass
    out["ds_local_read_s"] = time.perf_counter() - t
    out["ds_local_dropped"] = dropped
    cenv = dict(env, DS_STORE=os.path.join(tmp, "clone-store"))
    t = time.perf_counter()
    subprocess.run([ds, "clone", "data"], env=cenv, check=True, capture_output=True)
    out["ds_clone_s"] = time.perf_counter() - t
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048, help="workspace size in MiB (default 2048)")
    ap.add_argument("--change", type=int, default=10, help="MiB the workload changes (default 10)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the warm start (default 5)")
    ap.add_argument("--dataset-size", type=int, default=1024,
                    help="dataset size in MiB for the dataset rows (default 1024; 0: none)")
    ap.add_argument("--json-out", help="write the results here as JSON")
    a = ap.parse_args()
    ds = ds_bin()
    tmp = tempfile.mkdtemp(prefix="ds-bench-tasks.")
    env = dict(os.environ, DS_STORE=os.path.join(tmp, "me"))
    env.pop("DS_TOKEN", None)
    procs: list[Proc] = []
    results: dict[str, float] = {}
    try:
        hub, url, admin = start_hub(ds, tmp, env)
        procs.append(hub)
        env.update(DS_HUB=url, DS_TOKEN=admin)
        work = os.path.join(tmp, "work")
        os.makedirs(work)
        left, i = a.size * MiB, 0
        while left > 0:
            n = min(left, 512 * MiB)
            with open(os.path.join(work, f"ckpt-{i}.bin"), "wb") as f:
                for _ in range(n // MiB):
                    f.write(os.urandom(MiB))
            left -= n
            i += 1
        subprocess.run([ds, "snapshot", work, "-w", "w"], env=env, check=True, capture_output=True)
        subprocess.run([ds, "push", "w"], env=env, check=True, capture_output=True)
        token = runner_token(ds, env)

        def runner(cache: str) -> Proc:
            return start_runner(ds, url, token, os.path.join(tmp, cache), env,
                                ["--executor", "process", "--executor", "docker", "--docker-network", "none"]
                                if docker else [])

        image = os.environ.get("DS_TEST_IMAGE", "")
        docker = bool(os.environ.get("DOCKER_HOST") and image)

        # Cold start: a fresh cache pulls everything first.
        r = runner("cache-cold")
        results["start_cold_s"] = first_line_seconds([ds, "run", "-w", "w", "--", "echo", "first"], env)
        r.stop()
        shutil.rmtree(os.path.join(tmp, "cache-cold"), ignore_errors=True)

        r = runner("cache")
        procs.append(r)
        first_line_seconds([ds, "run", "-w", "w", "--", "echo", "first"], env)  # warm the cache
        warm = [first_line_seconds([ds, "run", "-w", "w", "--", "echo", "first"], env) for _ in range(a.reps)]
        results["start_warm_s"] = statistics.median(warm)
        floor = [first_line_seconds(["echo", "first"], env) for _ in range(a.reps)]
        results["floor_process_s"] = statistics.median(floor)
        if docker:
            dargs = ["run", "-w", "w", "--executor", "docker", "--image", image, "--", "echo", "first"]
            first_line_seconds([ds] + dargs, env)
            results["start_warm_docker_s"] = statistics.median(
                [first_line_seconds([ds] + dargs, env) for _ in range(a.reps)])
            results["floor_podman_run_s"] = statistics.median(
                [first_line_seconds(["podman", "--url", os.environ["DOCKER_HOST"], "run", "--rm",
                                     "--network", "none", image, "echo", "first"], env)
                 for _ in range(a.reps)])

        # Finish: change --change MiB of a checkpoint; the workload's last
        # line is the time it exits; the hub records when the task ended
        # (final snapshot + unmount + push + Done).
        script = (f"dd if=/dev/urandom of=ckpt-0.bin bs=1M count={a.change} seek=100 "
                  "conv=notrunc status=none; date +%s.%N")
        out = subprocess.run([ds, "run", "-w", "w", "--", "sh", "-c", script],
                             env=env, check=True, capture_output=True, text=True).stdout
        exited = float(out.strip().splitlines()[-1])
        tasks = json.loads(subprocess.run([ds, "tasks", "--json", "--limit", "1"], env=env, check=True,
                                          capture_output=True, text=True).stdout)
        if tasks[0]["state"] != "succeeded":
            raise SystemExit(f"the finish task did not succeed: {tasks[0]}")
        results["finish_s"] = tasks[0]["ended_ms"] / 1000.0 - exited
        if a.dataset_size:
            # One runner named bench at a time: the dataset rows start their own.
            r.stop()
            procs.remove(r)
            results.update(dataset_rows(ds, tmp, env, url, token, a.dataset_size))
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    size = f"{a.size} MiB workspace"
    rows = [
        ("start, workspace cached (process)", results["start_warm_s"], results["floor_process_s"],
         "starting the command directly"),
        ("start, fresh runner (whole pull first)", results["start_cold_s"], None, size),
    ]
    if "start_warm_docker_s" in results:
        rows.append(("start, workspace cached (docker)", results["start_warm_docker_s"],
                     results["floor_podman_run_s"], "podman run of the same image and command"))
    rows.append((f"finish: snapshot + push after {a.change} MiB changed", results["finish_s"], None, size))
    if a.dataset_size:
        f = a.dataset_size // 4
        rows += [
            (f"dataset: start, {a.dataset_size} MiB lazily", results["ds_start_s"],
             results["start_warm_s"], "a warm start without a dataset"),
            (f"dataset: read a {f} MiB file lazily", results["ds_read_s"], results["ds_local_read_s"],
             "reading it from local disk, page cache dropped" if results["ds_local_dropped"]
             else "reading it locally (page cache NOT dropped: not root)"),
            (f"dataset: the same {f} MiB in the next task", results["ds_read_again_s"], None,
             "read from the runner's cache, where the first task kept it"),
            ("dataset: 4 KiB read mid-file, lazily", results["ds_seek_s"], None, "one round trip"),
            (f"dataset: ds clone of all {a.dataset_size} MiB", results["ds_clone_s"], None,
             "the eager alternative"),
        ]
    print(f"{'measure':<48} {'ds':>8} {'floor':>8} {'ds - floor':>10}  floor is")
    for name, v, fl, what in rows:
        fs = f"{fl:8.3f}" if fl is not None else f"{'-':>8}"
        d = f"{v - fl:10.3f}" if fl is not None else f"{'-':>10}"
        print(f"{name:<48} {v:8.3f} {fs} {d}  {what}")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(dict(results, size_mib=a.size, change_mib=a.change), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
