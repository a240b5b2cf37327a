#!/usr/bin/env python3
"""Dataset mirror benchmark: `ds dataset mirror` against `rclone sync` and
`aws s3 sync` on the same S3 bucket (moto on loopback), in the same run.

Steps, for each tool:
  1. first mirror of a bucket prefix of --objects objects / --size bytes;
  2. re-mirror after --change of the objects were overwritten with new
     bytes (goal: time and bytes downloaded proportional to the change,
     i.e. >= 20x faster than the first mirror);
  3. (ds) objects listed and compared per second, from the mirror's own
     listing time; rclone's `lsf -R` over the same prefix beside it.

Peers: rclone (Debian's package, installed when missing unless
--no-install) and the AWS CLI (pip, in a venv under ~/.cache, with
--tools ...,aws). Python 3 standard library plus boto3 from the moto venv
that scripts/s3.sh creates. Timings are printed, never asserted.

  python3 benches/dataset.py                       # 10,000 objects, 2 GiB
  python3 benches/dataset.py --objects 2000 --size 256M --tools ds,rclone
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MiB = 1 << 20


def parse_size(s: str) -> int:
    s = s.strip().upper()
    mult = 1
    if s[-1] in "KMG":
        mult = 1 << (10 * ("KMG".index(s[-1]) + 1))
        s = s[:-1]
    return int(float(s) * mult)


def start_moto() -> tuple[dict, int | None]:
    if os.environ.get("DS_TEST_S3_ENDPOINT"):
        return {"DS_TEST_S3_ENDPOINT": os.environ["DS_TEST_S3_ENDPOINT"]}, None
    out = subprocess.run([os.path.join(ROOT, "scripts/s3.sh")], check=True, capture_output=True, text=True).stdout
    env = {}
    for line in out.splitlines():
        for part in line.removeprefix("export ").split():
            k, _, v = part.partition("=")
            env[k] = v
    return env, int(env["DS_S3_PID"])


def boto(ep: str):
    sys.path.insert(0, glob_site())
    import boto3  # noqa: E402

    return boto3.client("s3", endpoint_url=ep, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")


def glob_site() -> str:
    venv = os.environ.get("DS_MOTO_VENV", os.path.expanduser("~/.cache/ds-moto"))
    lib = os.path.join(venv, "lib")
    py = sorted(os.listdir(lib))[0]
    return os.path.join(lib, py, "site-packages")


def populate(s3, bucket: str, prefix: str, n: int, size: int, keys: list[int] | None = None, seed: int = 0) -> int:
    from concurrent.futures import ThreadPoolExecutor

    each = max(1, size // n)

    def put(i: int) -> int:
        body = os.urandom(each)
        s3.put_object(Bucket=bucket, Key=f"{prefix}{i // 100:03d}/obj-{i:06d}.bin", Body=body)
        return len(body)

    with ThreadPoolExecutor(16) as ex:
        return sum(ex.map(put, keys if keys is not None else range(n)))


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({p.returncode}): {p.stderr[-2000:]}")
    return dt, p.stdout + p.stderr


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def install_rclone() -> None:
    if have("rclone"):
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "rclone"], check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def aws_cli() -> str:
    venv = os.path.expanduser("~/.cache/ds-bench-awscli")
    exe = os.path.join(venv, "bin", "aws")
    if not os.path.exists(exe):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "awscli"], check=True)
    return exe


def rclone_bytes(out: str) -> int:
    # "Transferred:   	  204.800 MiB / 204.800 MiB, 100%, ..."
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Transferred:") and "/" in line and "%" in line:
            num, unit = line.split(":", 1)[1].split("/")[0].split()
            mult = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}.get(unit, 1)
            return int(float(num) * mult)
    return -1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=10_000)
    ap.add_argument("--size", default="2G", help="total bytes (objects are equal-sized)")
    ap.add_argument("--change", type=float, default=0.01, help="fraction of objects overwritten")
    ap.add_argument("--tools", default="ds,rclone", help="ds,rclone,aws")
    ap.add_argument("--ds", default=os.path.expanduser("~/.cache/ds-target/debug/ds"))
    ap.add_argument("--no-install", action="store_true")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    tools = a.tools.split(",")
    size = parse_size(a.size)
    if "rclone" in tools and not a.no_install:
        install_rclone()
    env_s3, pid = start_moto()
    ep = env_s3["DS_TEST_S3_ENDPOINT"]
    base_env = {**os.environ, "AWS_ENDPOINT_URL": ep, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    s3 = boto(ep)
    bucket, prefix = f"bench-{int(time.time())}", "data/"
    s3.create_bucket(Bucket=bucket)
    t = time.perf_counter()
    total = populate(s3, bucket, prefix, a.objects, size)
    print(f"bucket s3://{bucket}/{prefix}: {a.objects} objects, {total / MiB:.0f} MiB (uploaded in {time.perf_counter() - t:.1f}s)")
    work = tempfile.mkdtemp(prefix="ds-dataset-bench-")
    rows: dict[str, dict] = {}
    # rclone reads its own config; AWS_* variables only confuse its SDK.
    rclone_env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, "RCLONE_CONFIG_MOTO_TYPE": "s3", "RCLONE_CONFIG_MOTO_PROVIDER": "Other",
                  "RCLONE_CONFIG_MOTO_ENDPOINT": ep, "RCLONE_CONFIG_MOTO_ACCESS_KEY_ID": "test",
                  "RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY": "test", "RCLONE_CONFIG_MOTO_REGION": "us-east-1"}

    def run_tool(tool: str, phase: str) -> None:
        r = rows.setdefault(tool, {})
        if tool == "ds":
            dt, out = timed([a.ds, "--store", os.path.join(work, "ds-store"), "dataset", "mirror",
                             f"s3://{bucket}/{prefix}", "-d", "bench", "--json"], base_env)
            j = json.loads(out[: out.rindex("}") + 1])
            r[phase] = {"s": dt, "bytes": j["bytes_fetched"], "objects": j["objects_fetched"],
                        "list_s": j["list_seconds"], "listed": j["objects"]}
        elif tool == "rclone":
            dt, out = timed(["rclone", "sync", f"moto:{bucket}/{prefix}", os.path.join(work, "rclone"),
                             "--transfers", "16", "--checkers", "16", "--stats", "1h", "--stats-log-level", "NOTICE"], rclone_env)
            r[phase] = {"s": dt, "bytes": rclone_bytes(out)}
        elif tool == "aws":
            dt, out = timed([aws_cli(), "s3", "sync", f"s3://{bucket}/{prefix}", os.path.join(work, "aws"),
                             "--endpoint-url", ep, "--only-show-errors"], base_env)
            r[phase] = {"s": dt, "bytes": -1}

    for tool in tools:
        run_tool(tool, "first")
    changed = list(range(0, a.objects, max(1, round(1 / a.change))))
    changed_bytes = populate(s3, bucket, prefix, a.objects, size, keys=changed)
    print(f"overwrote {len(changed)} objects ({changed_bytes / MiB:.1f} MiB) with new bytes")
    for tool in tools:
        run_tool(tool, "again")
    if "rclone" in tools:
        dt, out = timed(["rclone", "lsf", "-R", "--files-only", f"moto:{bucket}/{prefix}"], rclone_env)
        rows["rclone"]["list"] = {"s": dt, "listed": len(out.splitlines())}

    print()
    print(f"| tool | first mirror (s) | MiB/s | re-mirror after {a.change:.0%} (s) | MiB fetched again | first ÷ again | objects listed/s |")
    print("|---|---|---|---|---|---|---|")
    for tool, r in rows.items():
        f, g = r["first"], r["again"]
        rate = ""
        if "list_s" in g:
            rate = f"{g['listed'] / max(g['list_s'], 1e-9):,.0f}"
        elif "list" in r:
            rate = f"{r['list']['listed'] / max(r['list']['s'], 1e-9):,.0f} (lsf -R)"
        again_mib = f"{g['bytes'] / MiB:.1f}" if g["bytes"] >= 0 else "?"
        print(f"| {tool} | {f['s']:.2f} | {total / MiB / f['s']:.0f} | {g['s']:.2f} | {again_mib} | {f['s'] / g['s']:.1f}× | {rate} |")
    print(f"\nchanged bytes: {changed_bytes / MiB:.1f} MiB; moto at {ep}")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"objects": a.objects, "bytes": total, "changed_bytes": changed_bytes, "rows": rows}, f, indent=2)
    shutil.rmtree(work, ignore_errors=True)
    if pid:
        os.kill(pid, 15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
