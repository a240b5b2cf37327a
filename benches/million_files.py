#!/usr/bin/env python3
"""Peak memory and time of `ds snapshot` over a tree of many small files.

Makes N small files (default 1,000,000: 1,000 directories x 1,000 files of
64-2048 bytes), snapshots them cold, then again unchanged (the stat-cache
path), and prints wall time, files/s and peak RSS of each run (from wait4's
ru_maxrss, so no /usr/bin/time is needed).

    python3 benches/million_files.py [--files N] [--workdir DIR] [--ds PATH]
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time


def make_tree(root, n, per_dir=1000):
    rng = random.Random(42)
    made = 0
    d = 0
    while made < n:
        dpath = os.path.join(root, f"d{d:05}")
        os.makedirs(dpath, exist_ok=True)
        for i in range(min(per_dir, n - made)):
            with open(os.path.join(dpath, f"f{i:04}.txt"), "wb") as f:
                f.write(rng.randbytes(rng.randint(64, 2048)))
        made += min(per_dir, n - made)
        d += 1


def run(cmd, env):
    t = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    secs = time.monotonic() - t
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd} failed")
    return secs, ru.ru_maxrss / 1024, json.loads(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--workdir", default="/var/tmp/ds-million")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/ds-target"))
    ap.add_argument("--ds", default=os.path.join(target, "debug", "ds"))
    ap.add_argument("--keep", action="store_true", help="keep the tree for another run")
    a = ap.parse_args()
    tree = os.path.join(a.workdir, "tree")
    store = os.path.join(a.workdir, "store")
    marker = os.path.join(a.workdir, f"made-{a.files}")
    if not os.path.exists(marker):
        shutil.rmtree(a.workdir, ignore_errors=True)
        t = time.monotonic()
        make_tree(tree, a.files)
        open(marker, "w").close()
        print(f"made {a.files} files in {time.monotonic() - t:.1f}s", file=sys.stderr)
        time.sleep(1.5)  # let the files age past the stat cache's racy window
    shutil.rmtree(store, ignore_errors=True)
    env = dict(os.environ, DS_STORE=store)
    subprocess.run([a.ds, "init"], env=env, check=True, stderr=subprocess.DEVNULL)
    rows = []
    for label in ["cold", "unchanged"]:
        secs, rss, out = run([a.ds, "snapshot", tree, "--workspace", "m", "--json"], env)
        rows.append((label, secs, rss, out))
        print(f"{label:10} {out['files']:>9} files  {secs:7.2f}s  {out['files'] / secs:9.0f} files/s  "
              f"peak RSS {rss:7.1f} MiB  read {out['files_read']} files")
    if not a.keep:
        shutil.rmtree(a.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
