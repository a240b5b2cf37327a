#!/usr/bin/env python3
"""Run benchmarks: what recording a run costs a workload, and how fast runs
are listed, beside a floor measured in the same run.

  per run     a task on a real `ds hub` + `ds runner` (process executor)
              whose workload emits --runs runs, each after touching one
              small file; the runner snapshots the live mount per run
              (O(changed)) with the record attached; the task's final push
              carries them all. Reported: (task time - the same workload
              without markers) / runs, i.e. snapshot + record per run plus
              the push's share. Goal: <= 50 ms per run.
  ds runs     listing --list runs from the local store (`ds runs --json`,
              built with `ds snapshot` of a directory whose .ds/runs/
              gains 4,000 run files per snapshot) and through the hub
              (`--hub`). Goal: <= 1 s for 100,000. Floor: `cat` of the
              same run documents as plain files (reading them, no more).

Python 3 standard library only; prints a table and, with --json-out, JSON.
No threshold is asserted anywhere: these machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tasks import Proc, ds_bin, runner_token, start_hub, start_runner  # noqa: E402


def timed(cmd: list[str], env: dict[str, str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, check=True, capture_output=True, **kw)
    return time.perf_counter() - t, p


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1000, help="runs one task emits (default 1000)")
    ap.add_argument("--list", type=int, default=100_000, help="runs to list (default 100000)")
    ap.add_argument("--json-out", help="write the results here as JSON")
    a = ap.parse_args()
    ds = ds_bin()
    tmp = tempfile.mkdtemp(prefix="ds-bench-runs.")
    env = dict(os.environ, DS_STORE=os.path.join(tmp, "me"))
    env.pop("DS_TOKEN", None)
    env.pop("DS_HUB", None)
    procs: list[Proc] = []
    results: dict[str, float] = {}
    try:
        hub, url, admin = start_hub(ds, tmp, env)
        procs.append(hub)
        henv = dict(env, DS_HUB=url, DS_TOKEN=admin)
        work = os.path.join(tmp, "work")
        os.makedirs(work)
        with open(os.path.join(work, "data.bin"), "wb") as f:
            f.write(os.urandom(64 << 20))
        subprocess.run([ds, "snapshot", work, "-w", "w"], env=env, check=True, capture_output=True)
        subprocess.run([ds, "push", "w"], env=henv, check=True, capture_output=True)
        r = start_runner(ds, url, runner_token(ds, henv), os.path.join(tmp, "cache"), env,
                         ["--executor", "process"])
        procs.append(r)

        def task(markers: bool) -> float:
            # Each run touches one small file, then announces itself; the
            # workload waits for nothing.
            body = ('printf "[[DS-RUN:r$i]]{\\"parameters\\":{\\"i\\":$i},\\"metrics\\":'
                    '{\\"loss\\":0.$i},\\"outputs\\":[\\"out/$i.txt\\"]}[[/DS-RUN:r$i]]\\n"' if markers
                    else 'echo "run $i"')
            script = f'mkdir -p out; i=0; while [ $i -lt {a.runs} ]; do echo $i > out/$i.txt; {body}; i=$((i+1)); done'
            secs, _ = timed([ds, "run", "-w", "w", "--", "sh", "-c", script], henv)
            return secs

        task(False)  # warm the runner's cache
        plain = task(False)
        marked = task(True)
        results["task_plain_s"] = plain
        results["task_with_runs_s"] = marked
        results["per_run_ms"] = (marked - plain) / a.runs * 1000
        hub_list, p = timed([ds, "runs", "w", "--json"], henv)
        got = len(json.loads(p.stdout))
        results["task_runs_listed"] = got
        results["list_chain_hub_s"] = hub_list
        hub_list2, _ = timed([ds, "runs", "w", "--json"], henv)
        results["list_chain_hub_again_s"] = hub_list2

        # Listing many runs: 4,000 run files per directory snapshot.
        lw = os.path.join(tmp, "listing")
        os.makedirs(os.path.join(lw, ".ds", "runs"))
        lenv = dict(env, DS_STORE=os.path.join(tmp, "list-store"))
        made = 0
        t = time.perf_counter()
        while made < a.list:
            n = min(4000, a.list - made)
            for j in range(made, made + n):
                with open(os.path.join(lw, ".ds", "runs", f"{j}.json"), "w") as f:
                    json.dump({"parameters": {"lr": j / 1e5, "batch": 32},
                               "metrics": {"loss": 1 / (j + 1), "accuracy": j / a.list},
                               "labels": {"sweep": "s1"}}, f)
            subprocess.run([ds, "snapshot", lw, "-w", "l"], env=lenv, check=True, capture_output=True)
            made += n
        results["record_list_runs_s"] = time.perf_counter() - t
        local, p = timed([ds, "runs", "l", "--json"], lenv)
        assert len(json.loads(p.stdout)) == a.list, "every run listed"
        results["list_local_first_s"] = local
        results["list_local_s"] = min(timed([ds, "runs", "l", "--json"], lenv)[0] for _ in range(3))
        subprocess.run([ds, "push", "l"], env=dict(lenv, DS_HUB=url, DS_TOKEN=admin),
                       check=True, capture_output=True)
        hub_s, p = timed([ds, "runs", "l", "--json"], dict(lenv, DS_HUB=url, DS_TOKEN=admin))
        assert len(json.loads(p.stdout)) == a.list
        results["list_hub_s"] = hub_s
        hub_s2, _ = timed([ds, "runs", "l", "--json"], dict(lenv, DS_HUB=url, DS_TOKEN=admin))
        results["list_hub_again_s"] = hub_s2

        # The REST API the web UI pages through: 100 runs a page.
        def api_page(path: str) -> tuple[float, list, str | None]:
            req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {admin}"})
            t0 = time.perf_counter()
            with urllib.request.urlopen(req) as resp:
                body = resp.read()
                link = resp.headers.get("Link")
            return time.perf_counter() - t0, json.loads(body), link

        first_s, page1, link = api_page("/api/v1/workspaces/l/runs?limit=100")
        assert len(page1) == 100 and link, "a full first page with a next link"
        results["api_first_page_ms"] = first_s * 1000
        results["api_page_ms"] = min(api_page("/api/v1/workspaces/l/runs?limit=100")[0]
                                     for _ in range(5)) * 1000
        mid = json.loads(p.stdout)[a.list // 2]["id"]
        results["api_middle_page_ms"] = min(api_page(f"/api/v1/workspaces/l/runs?limit=100&after={mid}")[0]
                                            for _ in range(3)) * 1000
        subprocess.run(["sync"], check=True)
        floor, _ = timed(["sh", "-c", f"find {lw}/.ds/runs -name '*.json' -exec cat {{}} + > /dev/null"], env)
        results["floor_cat_s"] = floor
        results["runs_listed"] = a.list
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [
        (f"task of {a.runs} runs (snapshot+record each)", results["task_with_runs_s"], "s"),
        ("the same workload without markers", results["task_plain_s"], "s"),
        ("per run (goal <= 50 ms)", results["per_run_ms"], "ms"),
        (f"ds runs of those {results['task_runs_listed']} (a chain of snapshots), hub", results["list_chain_hub_s"], "s"),
        ("  again (snapshot summaries cached)", results["list_chain_hub_again_s"], "s"),
        (f"ds runs of {a.list} runs, local store, first (goal <= 1 s)", results["list_local_first_s"], "s"),
        ("  best of 3 more", results["list_local_s"], "s"),
        (f"ds runs of {a.list} runs, through the hub", results["list_hub_s"], "s"),
        ("  again (snapshot summaries cached)", results["list_hub_again_s"], "s"),
        (f"REST page of 100 of {a.list} runs, first (goal <= 100 ms)", results["api_first_page_ms"], "ms"),
        ("  best of 5 more", results["api_page_ms"], "ms"),
        (f"  the page after run {a.list // 2}, best of 3", results["api_middle_page_ms"], "ms"),
        (f"floor: cat {a.list} run files", results["floor_cat_s"], "s"),
    ]
    for name, v, unit in rows:
        print(f"{name:<56} {v:10.3f} {unit}")
    print(f"local listing / floor: {results['list_local_s'] / max(results['floor_cat_s'], 1e-9):.1f}x")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
