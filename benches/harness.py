#!/usr/bin/env python3
"""End-to-end benchmark: ds against restic, borg, casync and rsync.

The harness builds a deterministic ML-workspace corpus (source files, CSVs,
checkpoints, thousands of small files), snapshots it with ds and every peer,
applies a realistic mutation (CSV rows appended, a few MB of a checkpoint
overwritten, small files added and deleted), snapshots again, restores, checks
every restore byte for byte against the corpus, and prints one table of
timings, repository growth, peak RSS and ratios (ds/peer, bytes added / truly
changed bytes, ds throughput / physical limits measured in the same run).

Python 3 standard library only. See benches/README.md for the full story and
`harness.py --help` for every flag.

Exit codes: 0 everything ran and every restore was byte-identical; 1 ds failed
(any ds command, including `ds verify`) or some tool's restore differed from
the corpus; 2 usage; 3 ds was fine but a peer command failed. Timings are
never asserted on.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import threading
import sys
import tempfile
import time
from typing import Any, Callable

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS_FORMAT = 1  # bump when the generator changes, so cached corpora are rebuilt
ALL_TOOLS = ["ds", "restic", "borg", "casync", "rsync"]

# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """'2G', '300M', '16M', '512K', '1.5G', '12345' -> bytes (binary units)."""
    s = text.strip().upper()
    for suffix in ("IB", "B"):
        if s.endswith(suffix) and len(s) > len(suffix):
            s = s[: -len(suffix)]
            break
    mult = 1
    if s and s[-1] in "KMGT":
        mult = 1 << (10 * ("KMGT".index(s[-1]) + 1))
        s = s[:-1]
    try:
        value = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 2G, 300M, 16M)")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return int(value * mult)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rmtree(path: str) -> None:
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def du_bytes(path: str) -> int:
    """Apparent size like `du -sb`: files, directories and symlinks, hard links once."""
    if not os.path.lexists(path):
        return 0
    st = os.lstat(path)
    total = st.st_size
    if not os.path.isdir(path) or os.path.islink(path):
        return total
    seen: set[tuple[int, int]] = set()
    stack = [path]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                is_dir = e.is_dir(follow_symlinks=False)
                if not is_dir and st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                total += st.st_size
                if is_dir:
                    stack.append(e.path)
    return total


def list_files(root: str) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(p)
    return out


def warm(root: str) -> None:
    """Read every file once so the corpus is in the page cache."""
    buf = bytearray(8 * MiB)
    for p in list_files(root):
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def tree_manifest(root: str) -> dict[str, tuple]:
    """relative path -> ('f', size, sha1, mode) | ('l', target) | ('d', mode) | ('o',)."""
    out: dict[str, tuple] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            for e in it:
                r = os.path.join(rel, e.name) if rel else e.name
                st = e.stat(follow_symlinks=False)
                if e.is_symlink():
                    out[r] = ("l", os.readlink(e.path))
                elif e.is_dir(follow_symlinks=False):
                    out[r] = ("d", st.st_mode & 0o7777)
                    stack.append(r)
                elif e.is_file(follow_symlinks=False):
                    with open(e.path, "rb") as f:
                        digest = hashlib.file_digest(f, "sha1").hexdigest()
                    out[r] = ("f", st.st_size, digest, st.st_mode & 0o7777)
                else:
                    out[r] = ("o",)
    return out


def compare_trees(expected: dict[str, tuple], got: dict[str, tuple]) -> tuple[list[str], list[str]]:
    """(errors, mode warnings). Errors: missing/extra entries, content, type, symlink target."""
    errors, modes = [], []
    for p in sorted(expected.keys() - got.keys()):
        errors.append(f"missing: {p}")
    for p in sorted(got.keys() - expected.keys()):
        errors.append(f"extra: {p}")
    for p in sorted(expected.keys() & got.keys()):
        e, g = expected[p], got[p]
        if e[0] != g[0]:
            errors.append(f"type differs: {p} ({e[0]} vs {g[0]})")
        elif e[0] == "f":
            if e[1:3] != g[1:3]:
                errors.append(f"content differs: {p} ({e[1]} vs {g[1]} bytes)")
            elif e[3] != g[3]:
                modes.append(f"mode differs: {p} ({oct(e[3])} vs {oct(g[3])})")
        elif e[0] == "l" and e != g:
            errors.append(f"symlink differs: {p} ({e[1]} vs {g[1]})")
        elif e[0] == "d" and e != g:
            modes.append(f"mode differs: {p}/ ({oct(e[1])} vs {oct(g[1])})")
    return errors, modes


# --------------------------------------------------------------------------
# running commands
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    cmd: list[str]
    rc: int
    seconds: float
    maxrss_kib: int  # ru_maxrss from os.wait4 in LAUNCHER (includes reaped grandchildren)
    cpu_user: float
    cpu_sys: float
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def cpu(self) -> float:
        return self.cpu_user + self.cpu_sys

    @property
    def rss_mib(self) -> float:
        return self.maxrss_kib / 1024


# Peak RSS: Linux folds the high-water RSS of the address space a process had *before*
# exec into its ru_maxrss, so a child forked straight from this (large) python process
# would report at least this process's peak. Commands are therefore started by a small
# fresh interpreter (`python3 -S -I`) that spawns the command, reaps it with os.wait4 and
# writes its rusage to a file. The remaining floor (~8 MiB: the launcher's own pages) is
# measured once with `true` and reported.
LAUNCHER = r"""
import os, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t = time.perf_counter()
try:
    pid = os.posix_spawnp(cmd[0], cmd, os.environ)
except OSError as e:
    sys.stderr.write(f"cannot run {cmd[0]}: {e}\n")
    res = [127, 0.0, 0, 0.0, 0.0]
else:
    _, status, ru = os.wait4(pid, 0)
    res = [os.waitstatus_to_exitcode(status), time.perf_counter() - t,
           ru.ru_maxrss, ru.ru_utime, ru.ru_stime]
with open(out, "w") as f:
    f.write(repr(res))
"""


class Runner:
    """Runs one command through LAUNCHER: wall time, ru_maxrss and CPU time of the command."""

    def __init__(self, prefix: list[str], logfile: str, verbose: bool):
        self.prefix = prefix
        self.logfile = logfile
        self.verbose = verbose

    def run(self, cmd: list[str], cwd: str | None = None, env: dict | None = None,
            capture: bool = False, measured: bool = True) -> Run:
        full = (self.prefix if measured else []) + cmd
        fd, resfile = tempfile.mkstemp(prefix="ds-bench-rusage-")
        os.close(fd)
        try:
            with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
                stdout = out if capture else subprocess.DEVNULL
                p = subprocess.run([sys.executable, "-S", "-I", "-c", LAUNCHER, resfile] + full,
                                   cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=err)
                out.seek(0)
                err.seek(0)
                so = out.read().decode(errors="replace")
                se = err.read().decode(errors="replace")
            try:
                with open(resfile) as f:
                    rc, seconds, maxrss, utime, stime = json.loads(f.read())
            except (OSError, ValueError):
                rc, seconds, maxrss, utime, stime = p.returncode or 1, 0.0, 0, 0.0, 0.0
        finally:
            os.unlink(resfile)
        r = Run(full, rc, seconds, maxrss, utime, stime, so, se)
        with open(self.logfile, "a") as f:
            f.write(f"$ {' '.join(full)}  (cwd={cwd})\n  rc={rc} {seconds:.3f}s "
                    f"rss={r.rss_mib:.1f}MiB cpu={r.cpu:.2f}s\n")
            if rc != 0 or self.verbose:
                f.write("".join("  | " + line + "\n" for line in se.splitlines()[-40:]))
        if self.verbose:
            log(f"  {' '.join(full)} -> rc={rc} {seconds:.2f}s")
        return r


# --------------------------------------------------------------------------
# corpus: a deterministic ML workspace
# --------------------------------------------------------------------------

DIGITS = bytes(48 + b % 10 for b in range(256))
SIGNS = bytes(43 if b & 1 else 45 for b in range(256))  # '+' / '-'
WORDS = ("loss model batch layer tensor grad optim step epoch sample feature label train eval "
         "metric weight bias scale norm embed token encode decode split shuffle cache load save "
         "config device seed mask score window stride kernel pool dropout attention head query "
         "value logits target predict augment resize crop record shard buffer queue").split()
T0 = 1_700_000_000
CSV_BLOCK_ROWS = 40_000
RAND_BLOCK = 8 * MiB


def csv_header(nfeat: int) -> bytes:
    return (b"row_id,timestamp," + b",".join(b"f%02d" % i for i in range(nfeat)) + b",label\n")


def csv_rowlen(nfeat: int) -> int:
    # row_id(10) , ts(10) , nfeat * (sign digit . 6 digits ,) label(1) \n
    return 24 + 10 * nfeat


def csv_rows(rnd: random.Random, start: int, n: int, nfeat: int) -> bytes:
    """n fixed-width rows: sequential ids/timestamps, random signed floats, a class label.

    Built with C-speed slice assignments (no per-field Python formatting)."""
    L = csv_rowlen(nfeat)
    buf = bytearray(rnd.randbytes(n * L).translate(DIGITS))
    ids = b"".join(b"%010d" % i for i in range(start, start + n))
    ts = b"".join(b"%010d" % (T0 + 3 * i) for i in range(start, start + n))
    comma, dot = b"," * n, b"." * n
    for j in range(10):
        buf[j::L] = ids[j::10]
        buf[11 + j::L] = ts[j::10]
    buf[10::L] = comma
    buf[21::L] = comma
    for k in range(nfeat):
        p = 22 + 10 * k
        buf[p::L] = rnd.randbytes(n).translate(SIGNS)
        buf[p + 2::L] = dot
        buf[p + 9::L] = comma
    buf[L - 1::L] = b"\n" * n
    return bytes(buf)


def write_csv_rows(path: str, rnd: random.Random, start: int, nrows: int, nfeat: int, mode: str) -> int:
    written = 0
    with open(path, mode) as f:
        if mode == "wb":
            written += f.write(csv_header(nfeat))
        row = start
        while row < start + nrows:
            n = min(CSV_BLOCK_ROWS, start + nrows - row)
            written += f.write(csv_rows(rnd, row, n, nfeat))
            row += n
    return written


def write_random(path: str, rnd: random.Random, nbytes: int) -> None:
    with open(path, "wb") as f:
        left = nbytes
        while left > 0:
            n = min(RAND_BLOCK, left)
            f.write(rnd.randbytes(n))
            left -= n


def sentence(rnd: random.Random) -> str:
    return " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(4, 12))).capitalize()


def gen_python(rnd: random.Random, target: int) -> bytes:
    parts = [f'"""{sentence(rnd)}."""\n\nimport os\nimport numpy as np\nimport torch\nfrom torch import nn\n']
    size = len(parts[0])
    while size < target:
        name = "_".join(rnd.sample(WORDS, 2))
        a, b = rnd.sample(WORDS, 2)
        if rnd.random() < 0.3:
            cls = "".join(w.capitalize() for w in rnd.sample(WORDS, 2))
            s = (f"\n\nclass {cls}(nn.Module):\n    \"\"\"{sentence(rnd)}.\"\"\"\n\n"
                 f"    def __init__(self, {a}_dim={rnd.choice([64, 128, 256, 512, 1024])}, "
                 f"p={rnd.random():.2f}):\n        super().__init__()\n"
                 f"        self.{a} = nn.Linear({a}_dim, {a}_dim)\n        self.drop = nn.Dropout(p)\n\n"
                 f"    def forward(self, x):\n        return self.drop(torch.relu(self.{a}(x)))\n")
        else:
            s = (f"\n\ndef {name}({a}, {b}=None, scale={rnd.random():.4f}):\n"
                 f"    \"\"\"{sentence(rnd)}.\"\"\"\n"
                 f"    if {b} is None:\n        {b} = np.zeros_like({a})\n"
                 f"    out = {a} * scale + {b}\n"
                 f"    for i in range({rnd.randint(1, 64)}):\n"
                 f"        out = np.maximum(out, 0) - {rnd.random():.6f} * i\n"
                 f"    return out\n")
        parts.append(s)
        size += len(s)
    return "".join(parts).encode()


def gen_jsonl(rnd: random.Random, target: int) -> bytes:
    lines, size, step, loss = [], 0, 0, 2.5 + rnd.random()
    while size < target:
        loss *= 0.999 + rnd.random() * 0.0015
        line = (f'{{"step": {step}, "loss": {loss:.6f}, "lr": {3e-4 * 0.9999 ** step:.3e}, '
                f'"acc": {min(0.999, 1 - loss / 3):.4f}, "grad_norm": {rnd.random() * 5:.4f}}}\n')
        lines.append(line)
        size += len(line)
        step += 10
    return "".join(lines).encode()


def gen_yaml(rnd: random.Random, target: int) -> bytes:
    lines, size = [], 0
    while size < target:
        line = f"{rnd.choice(WORDS)}_{rnd.choice(WORDS)}: {rnd.choice([rnd.randint(1, 4096), round(rnd.random(), 5), rnd.choice(WORDS)])}\n"
        lines.append(line)
        size += len(line)
    return "".join(lines).encode()


def gen_notebook(rnd: random.Random, target: int) -> bytes:
    cells = []
    while sum(len(c["source"][0]) for c in cells) < target * 0.8:
        cells.append({"cell_type": "code", "execution_count": len(cells) + 1, "metadata": {},
                      "outputs": [], "source": [gen_python(rnd, rnd.randint(200, 1500)).decode()]})
    return json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5},
                      indent=1).encode()


def gen_jpeg(rnd: random.Random, target: int) -> bytes:
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + rnd.randbytes(max(0, target - 11))


GENERATORS: dict[str, Callable[[random.Random, int], bytes]] = {
    "py": gen_python, "jsonl": gen_jsonl, "yaml": gen_yaml, "ipynb": gen_notebook,
    "jpg": gen_jpeg, "md": lambda rnd, n: (sentence(rnd) + ".\n\n").encode() * max(1, n // 60),
    "empty": lambda rnd, n: b"",
}


def make_plan(size: int, seed: int) -> dict:
    """Everything the corpus holds, as data: a pure function of (size, seed).

    Proportions: checkpoints 55%, CSVs 40%, source 0.5%, small binary samples 4%,
    logs/configs/notebooks 0.5%."""
    rnd = random.Random(f"{seed}:plan")
    plan: dict[str, Any] = {"size": size, "seed": seed, "format": CORPUS_FORMAT,
                            "checkpoints": [], "csvs": [], "small": [], "symlinks": []}
    ck = int(size * 0.55)
    for name, w in (("epoch_001.pt", 0.20), ("epoch_002.pt", 0.35), ("epoch_003.pt", 0.45)):
        plan["checkpoints"].append({"path": f"checkpoints/{name}", "bytes": int(ck * w)})
    plan["symlinks"].append({"path": "checkpoints/latest.pt", "target": "epoch_003.pt"})
    cs = int(size * 0.40)
    for path, w, nfeat in (("data/processed/train.csv", 0.60, 16),
                           ("data/processed/val.csv", 0.15, 16),
                           ("data/raw/events.csv", 0.25, 6)):
        nrows = max(10, int(cs * w) // csv_rowlen(nfeat))
        plan["csvs"].append({"path": path, "nfeat": nfeat, "rows": nrows})
    small = plan["small"]
    # source tree
    budget, i = int(size * 0.005), 0
    npkg = max(2, min(40, int(budget / 5000 / 40)))
    for p in range(npkg):
        small.append({"path": f"src/proj/{rnd.choice(WORDS)}{p}/__init__.py", "kind": "empty", "bytes": 0, "mode": 0o644})
    while budget > 0:
        n = rnd.randint(800, 9000)
        small.append({"path": f"src/proj/{small[i % npkg]['path'].split('/')[2]}/{rnd.choice(WORDS)}_{i:05d}.py",
                      "kind": "py", "bytes": n, "mode": 0o644})
        budget -= n
        i += 1
    small.append({"path": "scripts/train.sh", "kind": "md", "bytes": 400, "mode": 0o755})
    small.append({"path": "README.md", "kind": "md", "bytes": 3000, "mode": 0o644})
    # binary samples (thousands at multi-GB sizes)
    budget, i = int(size * 0.04), 0
    nsamples_est = max(1, budget // 20000)
    nclass = max(2, min(50, nsamples_est // 100))
    while budget > 0:
        n = rnd.randint(4000, 36000)
        small.append({"path": f"data/samples/class_{i % nclass:02d}/img_{i:06d}.jpg", "kind": "jpg", "bytes": n, "mode": 0o644})
        budget -= n
        i += 1
    # logs, configs, notebooks
    budget, i = int(size * 0.005), 0
    while budget > 0:
        kind = ("jsonl", "jsonl", "yaml", "ipynb")[i % 4]
        n = rnd.randint(2000, 60000)
        where = {"jsonl": f"logs/run_{i:03d}/metrics.jsonl", "yaml": f"configs/exp_{i:03d}.yaml",
                 "ipynb": f"notebooks/analysis_{i:03d}.ipynb"}[kind]
        small.append({"path": where, "kind": kind, "bytes": n, "mode": 0o644})
        budget -= n
        i += 1
    return plan


def file_rnd(seed: int, path: str, salt: str = "") -> random.Random:
    return random.Random(f"{seed}:{path}:{salt}")


def write_small(root: str, seed: int, entry: dict) -> int:
    p = os.path.join(root, entry["path"])
    os.makedirs(os.path.dirname(p), exist_ok=True)
    data = GENERATORS[entry["kind"]](file_rnd(seed, entry["path"]), entry["bytes"])
    with open(p, "wb") as f:
        f.write(data)
    os.chmod(p, entry["mode"])
    return len(data)


def generate_corpus(root: str, plan: dict) -> None:
    seed = plan["seed"]
    rmtree(root)
    os.makedirs(root)
    for c in plan["checkpoints"]:
        p = os.path.join(root, c["path"])
        os.makedirs(os.path.dirname(p), exist_ok=True)
        write_random(p, file_rnd(seed, c["path"]), c["bytes"])
    for s in plan["symlinks"]:
        os.symlink(s["target"], os.path.join(root, s["path"]))
    for c in plan["csvs"]:
        p = os.path.join(root, c["path"])
        os.makedirs(os.path.dirname(p), exist_ok=True)
        write_csv_rows(p, file_rnd(seed, c["path"]), 0, c["rows"], c["nfeat"], "wb")
    for e in plan["small"]:
        write_small(root, seed, e)


def corpus_stats(root: str) -> tuple[int, int]:
    files = list_files(root)
    return len(files), sum(os.path.getsize(p) for p in files)


class Mutation:
    """The realistic change between two snapshots, and how to undo it.

    Appends ~1% rows to every CSV, overwrites a few MiB in the middle of the largest
    checkpoint, adds ~1% new small files and deletes ~1% of the samples.
    `changed` = appended + overwritten + added bytes (deleted bytes are not counted)."""

    def __init__(self, root: str, plan: dict):
        self.root, self.plan, self.seed = root, plan, plan["seed"]
        rnd = random.Random(f"{self.seed}:mutation")
        self.appends = [(c, max(1, c["rows"] // 100)) for c in plan["csvs"]]
        ck = max(plan["checkpoints"], key=lambda c: c["bytes"])
        self.ck = ck
        self.ow_len = min(4 * MiB, max(64 * 1024, ck["bytes"] // 16))
        self.ow_off = max(0, min(ck["bytes"] - self.ow_len, ck["bytes"] * 37 // 100 + 12345))
        samples = [e for e in plan["small"] if e["kind"] == "jpg"]
        n = max(2, len(samples) // 100)
        self.deletes = rnd.sample(samples, min(n, len(samples)))
        self.adds = []
        for i in range(max(3, n)):
            base = os.path.dirname(samples[i % len(samples)]["path"]) if samples else "data/samples"
            self.adds.append({"path": f"{base}/new_{i:05d}.jpg", "kind": "jpg",
                              "bytes": rnd.randint(4000, 36000), "mode": 0o644})
        self.adds.append({"path": "src/proj/experiments_new.py", "kind": "py", "bytes": 6000, "mode": 0o644})
        self.adds.append({"path": "logs/run_new/metrics.jsonl", "kind": "jsonl", "bytes": 20000, "mode": 0o644})
        self.undo_region: bytes | None = None
        self.undo_files: dict[str, tuple[bytes, int]] = {}
        self.stats: dict[str, int] = {}

    def apply(self) -> dict[str, int]:
        appended = 0
        for c, rows in self.appends:
            appended += write_csv_rows(os.path.join(self.root, c["path"]), file_rnd(self.seed, c["path"], "append"),
                                       c["rows"], rows, c["nfeat"], "ab")
        p = os.path.join(self.root, self.ck["path"])
        with open(p, "r+b") as f:
            f.seek(self.ow_off)
            self.undo_region = f.read(self.ow_len)
            f.seek(self.ow_off)
            f.write(random.Random(f"{self.seed}:overwrite").randbytes(self.ow_len))
        added = 0
        for e in self.adds:
            added += write_small(self.root, self.seed, e)
        deleted = 0
        for e in self.deletes:
            p = os.path.join(self.root, e["path"])
            with open(p, "rb") as f:
                self.undo_files[p] = (f.read(), os.stat(p).st_mode & 0o7777)
            deleted += len(self.undo_files[p][0])
            os.unlink(p)
        self.stats = {"appended_bytes": appended, "overwritten_bytes": self.ow_len,
                      "added_files": len(self.adds), "added_bytes": added,
                      "deleted_files": len(self.deletes), "deleted_bytes": deleted,
                      "changed_bytes": appended + self.ow_len + added}
        return self.stats

    def revert(self) -> None:
        for c, _rows in self.appends:
            p = os.path.join(self.root, c["path"])
            os.truncate(p, len(csv_header(c["nfeat"])) + c["rows"] * csv_rowlen(c["nfeat"]))
        if self.undo_region is not None:
            with open(os.path.join(self.root, self.ck["path"]), "r+b") as f:
                f.seek(self.ow_off)
                f.write(self.undo_region)
            self.undo_region = None
        for e in self.adds:
            p = os.path.join(self.root, e["path"])
            if os.path.lexists(p):
                os.unlink(p)
        rn = os.path.join(self.root, "logs/run_new")
        if os.path.isdir(rn) and not os.listdir(rn):
            os.rmdir(rn)
        for p, (data, mode) in self.undo_files.items():
            with open(p, "wb") as f:
                f.write(data)
            os.chmod(p, mode)
        self.undo_files = {}


# --------------------------------------------------------------------------
# tools: one class per program; add a method here to add a row
# --------------------------------------------------------------------------


class NotSupported(Exception):
    pass


class Tool:
    """One program under test, bound to one fresh repository directory.

    `root` holds `repo/` (what is measured with du) and `cache/` (tool-side caches that
    are not part of the repository: restic cache, borg base dir, casync encoder cache).
    snapshot(label) takes a snapshot of the corpus named `label`; restore(label, dest)
    restores it and returns the directory that should equal the corpus."""

    name = "?"
    binary = "?"
    apt = ""  # Debian package providing it

    def __init__(self, h: "Harness", root: str):
        self.h = h
        self.root = root
        self.repo = os.path.join(root, "repo")
        self.cache = os.path.join(root, "cache")
        self.labels: list[str] = []

    @classmethod
    def exe(cls, h: "Harness") -> str | None:
        return shutil.which(cls.binary)

    @classmethod
    def version(cls, h: "Harness") -> str:
        r = h.runner.run([cls.exe(h) or cls.binary, "--version"], capture=True, measured=False)
        text = (r.stdout or r.stderr).strip()
        return " ".join(text.splitlines()[0].split()) if text else "?"

    def env(self) -> dict:
        return dict(os.environ)

    def run(self, cmd: list[str], cwd: str | None = None, capture: bool = False) -> Run:
        return self.h.runner.run(cmd, cwd=cwd, env=self.env(), capture=capture)

    def prepare(self) -> None:
        rmtree(self.root)
        os.makedirs(self.cache)

    def init(self) -> Run:
        raise NotImplementedError

    def snapshot(self, corpus: str, label: str) -> Run:
        raise NotImplementedError

    def restore(self, label: str, dest: str) -> tuple[Run, str]:
        raise NotImplementedError

    def repo_bytes(self) -> int:
        return du_bytes(self.repo)

    def cleanup(self) -> None:
        rmtree(self.root)


class Ds(Tool):
    name, binary, apt = "ds", "ds", ""

    @classmethod
    def exe(cls, h):
        p = h.args.ds
        return p if os.path.isfile(p) and os.access(p, os.X_OK) else None

    def init(self):
        cmd = [self.exe(self.h), "--store", self.repo, "init"]
        if self.h.args.ds_compression:
            cmd += ["--compression", self.h.args.ds_compression]
        return self.run(cmd)

    def snapshot(self, corpus, label):
        r = self.run([self.exe(self.h), "--store", self.repo, "snapshot", corpus,
                      "--workspace", "bench", "-m", label, "--json"], capture=True)
        if r.ok:
            self.labels.append(label)
        return r

    def add_garbage(self, garbage):
        """Snapshots `garbage` as its own workspace and forgets it."""
        exe = self.exe(self.h)
        for cmd in (["snapshot", garbage, "--workspace", "garbage"], ["forget", "garbage"]):
            r = self.h.runner.run([exe, "--store", self.repo] + cmd, env=self.env(), measured=False)
            if not r.ok:
                return r
        return r

    def collect(self):
        return self.run([self.exe(self.h), "--store", self.repo, "gc"])

    def restore(self, label, dest):
        # the workspace name restores its latest snapshot; older ones are bench~N
        back = len(self.labels) - 1 - self.labels.index(label)
        snap = "bench" if back == 0 else f"bench~{back}"
        return self.run([self.exe(self.h), "--store", self.repo, "restore", snap, dest]), dest


class Restic(Tool):
    name, binary, apt = "restic", "restic", "restic"

    @classmethod
    def version(cls, h):
        r = h.runner.run([cls.exe(h), "version"], capture=True, measured=False)
        return r.stdout.strip()

    def env(self):
        e = dict(os.environ)
        e.update(RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=self.repo, RESTIC_CACHE_DIR=self.cache)
        return e

    def init(self):
        return self.run(["restic", "init"])

    def snapshot(self, corpus, label):
        # restic picks the previous snapshot of the same path/host as parent by itself
        return self.run(["restic", "backup", "--quiet", "--tag", label, corpus])

    def add_garbage(self, garbage):
        r = self.h.runner.run(["restic", "backup", "--quiet", "--tag", "garbage", garbage],
                              env=self.env(), measured=False)
        if not r.ok:
            return r
        r = self.h.runner.run(["restic", "snapshots", "--tag", "garbage", "--json"], env=self.env(),
                              capture=True, measured=False)
        if not r.ok:
            return r
        ids = [s["id"] for s in json.loads(r.stdout)]
        return self.h.runner.run(["restic", "forget"] + ids, env=self.env(), measured=False)

    def collect(self):
        return self.run(["restic", "prune"])

    def restore(self, label, dest):
        r = self.run(["restic", "restore", "latest", "--tag", label, "--target", dest])
        return r, os.path.join(dest, self.h.corpus.lstrip("/"))


class Borg(Tool):
    name, binary, apt = "borg", "borg", "borgbackup"

    def env(self):
        e = dict(os.environ)
        e.update(BORG_BASE_DIR=self.cache, BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                 BORG_RELOCATED_REPO_ACCESS_IS_OK="yes", BORG_PASSPHRASE="")
        return e

    def init(self):
        return self.run(["borg", "init", "--encryption", "none", self.repo])

    def snapshot(self, corpus, label):
        return self.run(["borg", "create", "--compression", "lz4", f"{self.repo}::{label}", "."], cwd=corpus)

    def add_garbage(self, garbage):
        for cmd, cwd in ((["create", f"{self.repo}::garbage", "."], garbage),
                         (["delete", f"{self.repo}::garbage"], None)):
            r = self.h.runner.run(["borg"] + cmd, cwd=cwd, env=self.env(), measured=False)
            if not r.ok:
                return r
        return r

    def collect(self):
        return self.run(["borg", "compact", self.repo])

    def restore(self, label, dest):
        os.makedirs(dest)
        return self.run(["borg", "extract", f"{self.repo}::{label}"], cwd=dest), dest


class Casync(Tool):
    name, binary, apt = "casync", "casync", "casync"

    def init(self):
        os.makedirs(os.path.join(self.repo, "store"))
        return Run(["(mkdir)"], 0, 0.0, 0, 0.0, 0.0, "", "")

    def snapshot(self, corpus, label):
        # --cache: casync's encoder cache, its equivalent of a stat cache for incrementals
        return self.run(["casync", "make", f"--store={self.repo}/store", f"--cache={self.cache}/enc",
                         f"{self.repo}/{label}.caidx", corpus], capture=True)

    def restore(self, label, dest):
        return self.run(["casync", "extract", f"--store={self.repo}/store",
                         f"{self.repo}/{label}.caidx", dest]), dest


class Rsync(Tool):
    name, binary, apt = "rsync", "rsync", "rsync"

    def init(self):
        os.makedirs(self.repo)
        return Run(["(mkdir)"], 0, 0.0, 0, 0.0, 0.0, "", "")

    def snapshot(self, corpus, label):
        # first snapshot: a full copy; later ones: --link-dest against the previous one
        # (unchanged files become hard links, changed files are copied whole)
        cmd = ["rsync", "-a"]
        if self.labels:
            cmd.append(f"--link-dest={self.repo}/{self.labels[-1]}")
        r = self.run(cmd + [corpus.rstrip("/") + "/", f"{self.repo}/{label}/"])
        if r.ok:
            self.labels.append(label)
        return r

    def restore(self, label, dest):
        return self.run(["rsync", "-a", f"{self.repo}/{label}/", dest.rstrip("/") + "/"]), dest


TOOL_CLASSES: dict[str, type[Tool]] = {t.name: t for t in (Ds, Restic, Borg, Casync, Rsync)}


# --------------------------------------------------------------------------
# physical limits measured in the same run
# --------------------------------------------------------------------------


def find_exec(corpus: str, *prog: str) -> list[str]:
    return ["find", corpus, "-type", "f", "-exec", *prog, "{}", "+"]


# key -> (description, command builder or None if unavailable, needs dropped caches)
def limit_specs(h: "Harness") -> dict[str, tuple[str, list[str] | None, bool]]:
    b3 = shutil.which("b3sum")
    return {
        "cat": ("cat corpus > /dev/null, page cache", find_exec(h.corpus, "cat"), False),
        "b3sum": ("b3sum corpus (all threads), page cache", find_exec(h.corpus, b3) if b3 else None, False),
        "b3sum_1t": ("b3sum --num-threads 1, page cache",
                     find_exec(h.corpus, b3, "--num-threads", "1") if b3 else None, False),
        "cat_cold": ("cat corpus > /dev/null after drop_caches", find_exec(h.corpus, "cat"), True),
        # The floor of a restore: writing the same tree (no fsync, like the
        # restores), read from the page cache.
        "cp_a": ("cp -a corpus into the workdir, page cache", ["cp", "-a", h.corpus, cp_a_dest(h)], False),
    }


def cp_a_dest(h: "Harness") -> str:
    return os.path.join(h.workdir, "cp-a")


# --------------------------------------------------------------------------
# metrics: one row each. `get(rep_values, ctx)` -> number | str | None.
# Add a row: append a Metric (and, if it needs a new measurement, a phase below).
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Metric:
    key: str
    label: str
    get: Callable[[dict, "Harness"], Any]
    ratio: bool = True  # print ds/peer
    limits: dict[str, str] = dataclasses.field(default_factory=dict)  # column -> limit key (MiB/s)


def _v(key):
    return lambda r, h: r.get(key)


def _div(a, b, scale=1.0):
    def f(r, h):
        x, y = r.get(a) if isinstance(a, str) else a(r, h), r.get(b) if isinstance(b, str) else b(r, h)
        return None if x is None or not y else x / y * scale
    return f


def _corpus_mib(r, h):
    return h.corpus_bytes / MiB


METRICS: list[Metric] = [
    Metric("cold_s", "cold snapshot, page cache warm (s)", _v("cold_s")),
    Metric("cold_mibs", "cold snapshot throughput (MiB/s)", _div(_corpus_mib, "cold_s"),
           limits={"ds/cat": "cat", "ds/b3sum": "b3sum", "ds/b3sum-1t": "b3sum_1t"}),
    Metric("cold_cpu", "cold snapshot CPU user+sys (s)", _v("cold_cpu")),
    Metric("cold_rss", "cold snapshot peak RSS (MiB)", _v("cold_rss")),
    Metric("cold_dc_s", "cold snapshot, caches dropped (s)", _v("cold_dc_s")),
    Metric("cold_dc_mibs", "cold, caches dropped (MiB/s)", _div(_corpus_mib, "cold_dc_s"),
           limits={"ds/cat": "cat_cold"}),
    Metric("repo_cold_mib", "repo size after cold (MiB)", lambda r, h: r["repo_cold"] / MiB if "repo_cold" in r else None),
    Metric("repo_ratio", "repo size / corpus size", lambda r, h: r["repo_cold"] / h.corpus_bytes if "repo_cold" in r else None),
    Metric("incr_s", "incremental snapshot (s)", _v("incr_s")),
    Metric("incr_cpu", "incremental CPU user+sys (s)", _v("incr_cpu")),
    Metric("incr_rss", "incremental peak RSS (MiB)", _v("incr_rss")),
    Metric("incr_added_mib", "incremental: repo growth (MiB)", lambda r, h: r["incr_added"] / MiB if "incr_added" in r else None),
    Metric("incr_added_ratio", "repo growth / truly changed bytes",
           lambda r, h: r["incr_added"] / h.mutation_stats["changed_bytes"] if "incr_added" in r and h.mutation_stats.get("changed_bytes") else None),
    Metric("restore_s", "restore latest (s)", _v("restore_s")),
    Metric("restore_mibs", "restore throughput (MiB/s)", _div(_corpus_mib, "restore_s"),
           limits={"ds/cp-a": "cp_a"}),
    Metric("restore_rss", "restore peak RSS (MiB)", _v("restore_rss")),
    Metric("restore_ok", "restore byte-identical", _v("restore_ok"), ratio=False),
    # ds only: push to a `ds hub` over loopback (file:// storage under the workdir)
    Metric("push_cold_mibs", "ds push, cold: new data MiB/s over loopback", _div(lambda r, h: (r.get("push_cold_bytes") or 0) / MiB, "push_cold_s"), ratio=False),
    Metric("push_vs_snapshot", "ds push cold: cold snapshot time / push time (goal >= 0.8)", _div("cold_s", "push_cold_s"), ratio=False),
    Metric("clone_cold_s", "ds clone, cold, into an empty store over loopback (s)", _v("clone_cold_s"), ratio=False),
    Metric("clone_vs_snapshot", "ds clone cold: cold snapshot time / clone time (goal >= 0.8)", _div("cold_s", "clone_cold_s"), ratio=False),
    Metric("push_incr_ratio", "ds push after mutation: bytes shipped / truly changed",
           lambda r, h: r["push_incr_bytes"] / h.mutation_stats["changed_bytes"] if "push_incr_bytes" in r and h.mutation_stats.get("changed_bytes") else None, ratio=False),
    Metric("push_incr_rt", "ds push after mutation: round trips", _v("push_incr_rt"), ratio=False),
    Metric("rsyncd_cold_s", "rsync -a into an rsync daemon on loopback, cold (s)", _v("rsyncd_cold_s"), ratio=False),
    Metric("push_vs_rsyncd", "ds push cold / rsync daemon, time (goal < 1)", _div("push_cold_s", "rsyncd_cold_s"), ratio=False),
    Metric("rsyncd_incr_s", "rsync -a into the daemon after mutation (s)", _v("rsyncd_incr_s"), ratio=False),
    Metric("push_incr_vs_rsyncd", "ds push after mutation / rsync daemon, time", _div("push_incr_s", "rsyncd_incr_s"), ratio=False),
    Metric("gc_s", "gc of 50% garbage: ds gc / restic prune / borg compact (s)", _v("gc_s")),
    Metric("gc_freed_mib", "gc of 50% garbage: repo shrank by (MiB)",
           lambda r, h: r["gc_freed"] / MiB if "gc_freed" in r else None),
    Metric("hub_gc_s", "ds gc --hub --grace 0s of 50% garbage, settle 1 s (s)", _v("hub_gc_s"), ratio=False),
    Metric("hub_gc_freed_mib", "ds gc --hub: bytes freed (MiB)",
           lambda r, h: r["hub_gc_freed"] / MiB if "hub_gc_freed" in r else None, ratio=False),
    # ds only: FUSE mounts (phase_fuse); need /dev/fuse, bindfs installed from Debian
    Metric("fuse_read_mibs", "ds mount (read-only): sequential read, warm (MiB/s)", _v("fuse_read_mibs"), ratio=False),
    Metric("fuse_direct_mibs", "ds mount --direct-io: same read (MiB/s)", _v("fuse_direct_mibs"), ratio=False),
    Metric("fuse_bindfs_mibs", "bindfs passthrough: same read, warm (MiB/s)", _v("fuse_bindfs_mibs"), ratio=False),
    Metric("fuse_read_vs_bindfs", "ds mount read / bindfs read (goal >= 0.8)", _div("fuse_read_mibs", "fuse_bindfs_mibs"), ratio=False),
    Metric("fuse_direct_vs_bindfs", "ds mount --direct-io read / bindfs read", _div("fuse_direct_mibs", "fuse_bindfs_mibs"), ratio=False),
    Metric("fuse_reread_mibs", "ds mount: second read in the same mount (MiB/s)", _v("fuse_reread_mibs"), ratio=False),
    Metric("fuse_bindfs_reread_mibs", "bindfs: second read in the same mount (MiB/s)", _v("fuse_bindfs_reread_mibs"), ratio=False),
    Metric("fuse_reread_vs_bindfs", "second read: ds / bindfs", _div("fuse_reread_mibs", "fuse_bindfs_reread_mibs"), ratio=False),
    Metric("fuse_cold_s", "ds snapshot of one big file, cold (s)", _v("fuse_cold_s"), ratio=False),
    Metric("fuse_rw_snap_s", "ds snapshot of a rw mount after a 1 MiB overwrite in it (s)", _v("fuse_rw_snap_s"), ratio=False),
    Metric("fuse_rw_vs_cold", "rw-mount snapshot / cold snapshot (goal <= 0.02)", _div("fuse_rw_snap_s", "fuse_cold_s"), ratio=False),
]


# --------------------------------------------------------------------------
# the harness
# --------------------------------------------------------------------------


class Harness:
    def __init__(self, args):
        self.args = args
        self.workdir = os.path.abspath(args.workdir)
        self.corpus = os.path.join(self.workdir, "corpus")
        self.runner = Runner(["nice", "-n", str(args.nice)] if args.nice is not None else [],
                             os.path.join(self.workdir, "harness.log"), args.verbose)
        self.tools: list[str] = []
        self.missing: dict[str, str] = {}
        self.versions: dict[str, str] = {}
        self.corpus_files = 0
        self.corpus_bytes = 0
        self.plan: dict = {}
        self.mutation_stats: dict[str, int] = {}
        # values[rep][tool][key]; limits[rep][limit key] = MiB/s
        self.values: list[dict[str, dict[str, Any]]] = []
        self.limits: list[dict[str, float]] = []
        self.extras: list[dict[str, Any]] = []
        self.failed: dict[str, list[str]] = {}  # tool -> reasons
        self.restore_mismatch: dict[str, list[str]] = {}
        self.can_drop = False
        self.rss_floor_mib = 0.0

    # ---- setup ----------------------------------------------------------

    def install(self) -> None:
        wanted = [t for t in self.args.tools if t != "ds"]
        todo = [TOOL_CLASSES[t].apt for t in wanted if not TOOL_CLASSES[t].exe(self)]
        if not self.args.no_install and not shutil.which("b3sum"):
            todo.append("b3sum")  # optional: a physical limit; may not exist everywhere
        if todo and not self.args.no_install:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            for pkg in todo:
                log(f"installing {pkg} with apt-get")
                ok = self.runner.run(["apt-get", "install", "-y", "-q", pkg], env=env, measured=False).ok
                if not ok:
                    self.runner.run(["apt-get", "update", "-q"], env=env, measured=False)
                    ok = self.runner.run(["apt-get", "install", "-y", "-q", pkg], env=env, measured=False).ok
                if not ok:
                    log(f"  could not install {pkg} (see {self.runner.logfile})")
        for t in self.args.tools:
            cls = TOOL_CLASSES[t]
            if cls.exe(self):
                self.tools.append(t)
                self.versions[t] = cls.version(self)
            else:
                self.missing[t] = ("not found at " + self.args.ds) if t == "ds" else \
                    ("not installed (--no-install)" if self.args.no_install else f"apt-get install {cls.apt} failed")
        if shutil.which("b3sum"):
            r = self.runner.run(["b3sum", "--version"], capture=True, measured=False)
            self.versions["b3sum"] = r.stdout.strip()

    def prepare_corpus(self) -> None:
        plan = make_plan(self.args.size, self.args.seed)
        meta_path = os.path.join(self.workdir, "corpus.json")
        meta = None
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                meta = json.load(f)
        reuse = (not self.args.regen and meta and meta.get("plan_sha") == self.plan_sha(plan)
                 and meta.get("clean") and os.path.isdir(self.corpus))
        if reuse:
            n, b = corpus_stats(self.corpus)
            reuse = (n, b) == (meta["files"], meta["bytes"])
        if reuse:
            log(f"reusing corpus {self.corpus} ({meta['files']} files, {human(meta['bytes'])})")
        else:
            log(f"generating corpus of ~{human(self.args.size)} in {self.corpus} (seed {self.args.seed})")
            t = time.perf_counter()
            generate_corpus(self.corpus, plan)
            n, b = corpus_stats(self.corpus)
            log(f"  {n} files, {human(b)} in {time.perf_counter() - t:.1f}s")
            meta = {"plan_sha": self.plan_sha(plan), "files": n, "bytes": b, "clean": True,
                    "size": self.args.size, "seed": self.args.seed}
            self.write_meta(meta)
        self.plan, self.meta = plan, meta
        self.corpus_files, self.corpus_bytes = meta["files"], meta["bytes"]

    @staticmethod
    def plan_sha(plan: dict) -> str:
        return hashlib.sha1(json.dumps(plan, sort_keys=True).encode()).hexdigest()

    def write_meta(self, meta: dict) -> None:
        with open(os.path.join(self.workdir, "corpus.json"), "w") as f:
            json.dump(meta, f)

    def check_drop_caches(self) -> None:
        if not self.args.drop_caches:
            return
        try:
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            self.can_drop = True
        except OSError as e:
            log(f"--drop-caches: /proc/sys/vm/drop_caches is not writable ({e}); dropped-cache rows skipped")

    def drop_caches(self) -> None:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")

    # ---- bookkeeping -----------------------------------------------------

    def fail(self, rep: int, tool: str, what: str, r: Run) -> None:
        tail = " | ".join(r.stderr.strip().splitlines()[-3:])
        msg = f"rep {rep + 1}: {what} failed (rc={r.rc}): {tail}"
        self.failed.setdefault(tool, []).append(msg)
        self.values[rep][tool]["failed"] = True
        log(f"  {tool}: {msg}")

    def alive(self, rep: int, tool: str) -> bool:
        return not self.values[rep][tool].get("failed")

    def order(self, rep: int) -> list[str]:
        k = rep % len(self.tools)
        return self.tools[k:] + self.tools[:k]

    # ---- phases ------------------------------------------------------------
    # Each phase runs over every tool (in the rep's rotated order) and stores raw
    # values in self.values[rep][tool]. Add a phase to PHASES to add a measurement.

    def phase_limits(self, rep: int, state: dict) -> None:
        res = self.limits[rep]
        for key, (desc, cmd, cold) in limit_specs(self).items():
            if cmd is None or (cold and not self.can_drop):
                continue
            if cold:
                self.drop_caches()
            else:
                warm(self.corpus)
            rmtree(cp_a_dest(self))
            os.sync()
            r = self.runner.run(cmd)
            rmtree(cp_a_dest(self))
            if r.ok and r.seconds > 0:
                res[key] = self.corpus_bytes / MiB / r.seconds
                log(f"  limit {key}: {res[key]:.0f} MiB/s ({desc})")
            else:
                log(f"  limit {key} failed: {r.stderr.strip()[:200]}")

    def phase_cold(self, rep: int, state: dict) -> None:
        for t in self.order(rep):
            tool = TOOL_CLASSES[t](self, os.path.join(self.workdir, "repos", t))
            state["tools"][t] = tool
            v = self.values[rep][t]
            tool.prepare()
            r = tool.init()
            if not r.ok:
                self.fail(rep, t, "init", r)
                continue
            warm(self.corpus)
            os.sync()
            r = tool.snapshot(self.corpus, "cold")
            if not r.ok:
                self.fail(rep, t, "cold snapshot", r)
                continue
            v.update(cold_s=r.seconds, cold_cpu=r.cpu, cold_rss=r.rss_mib, repo_cold=tool.repo_bytes())
            if t == "ds":
                self.extras[rep]["ds_cold_json"] = json.loads(r.stdout)
            log(f"  cold {t}: {r.seconds:.2f}s, repo {human(v['repo_cold'])}, rss {r.rss_mib:.0f} MiB")

    def phase_cold_dropped(self, rep: int, state: dict) -> None:
        if not self.can_drop:
            return
        for t in self.order(rep):
            if not self.alive(rep, t):
                continue
            tool = TOOL_CLASSES[t](self, os.path.join(self.workdir, "repos", t + "-dc"))
            tool.prepare()
            r = tool.init()
            if r.ok:
                self.drop_caches()
                r = tool.snapshot(self.corpus, "cold")
            if not r.ok:
                self.fail(rep, t, "cold snapshot (dropped caches)", r)
            else:
                self.values[rep][t].update(cold_dc_s=r.seconds)
                log(f"  cold, caches dropped, {t}: {r.seconds:.2f}s")
            tool.cleanup()

    def phase_mutate(self, rep: int, state: dict) -> None:
        m = Mutation(self.corpus, self.plan)
        self.meta["clean"] = False
        self.write_meta(self.meta)
        state["mutation"] = m
        self.mutation_stats = m.apply()
        log("  mutation: " + ", ".join(f"{k}={v}" for k, v in self.mutation_stats.items()))
        t = time.perf_counter()
        state["manifest"] = tree_manifest(self.corpus)
        self.extras[rep]["manifest_seconds"] = time.perf_counter() - t

    def phase_incremental(self, rep: int, state: dict) -> None:
        for t in self.order(rep):
            if not self.alive(rep, t):
                continue
            tool = state["tools"][t]
            v = self.values[rep][t]
            before = tool.repo_bytes()
            warm(self.corpus)
            os.sync()
            r = tool.snapshot(self.corpus, "incr")
            if not r.ok:
                self.fail(rep, t, "incremental snapshot", r)
                continue
            after = tool.repo_bytes()
            v.update(incr_s=r.seconds, incr_cpu=r.cpu, incr_rss=r.rss_mib, incr_added=after - before)
            if t == "ds":
                self.extras[rep]["ds_incr_json"] = json.loads(r.stdout)
            log(f"  incremental {t}: {r.seconds:.2f}s, +{human(after - before)}")

    def phase_restore(self, rep: int, state: dict) -> None:
        for t in self.order(rep):
            if not self.alive(rep, t):
                continue
            tool = state["tools"][t]
            dest = os.path.join(self.workdir, "restore", t)
            rmtree(dest)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.sync()
            r, root = tool.restore("incr", dest)
            if not r.ok:
                self.fail(rep, t, "restore", r)
                rmtree(dest)
                continue
            v = self.values[rep][t]
            v.update(restore_s=r.seconds, restore_rss=r.rss_mib)
            if os.path.isdir(root):
                errors, modes = compare_trees(state["manifest"], tree_manifest(root))
            else:
                errors, modes = [f"restored root {root} does not exist"], []
            if errors:
                v["restore_ok"] = "NO"
                self.restore_mismatch.setdefault(t, []).extend(f"rep {rep + 1}: {e}" for e in errors[:20])
                log(f"  restore {t}: NOT IDENTICAL ({len(errors)} differences), e.g. {errors[:3]}")
            else:
                v["restore_ok"] = "yes" if not modes else f"yes*{len(modes)}"
                if modes:
                    self.extras[rep].setdefault("mode_differences", {})[t] = modes[:20]
                log(f"  restore {t}: {r.seconds:.2f}s, identical" + (f" ({len(modes)} mode differences)" if modes else ""))
            if not self.args.keep:
                rmtree(dest)

    def phase_ds_verify(self, rep: int, state: dict) -> None:
        tool = state["tools"].get("ds")
        if tool is None or not self.alive(rep, "ds"):
            return
        r = self.runner.run([tool.exe(self), "--store", tool.repo, "verify"], measured=False)
        self.extras[rep]["ds_verify_seconds"] = r.seconds
        if not r.ok:
            self.fail(rep, "ds", "ds verify", r)
        else:
            log(f"  ds verify: ok ({r.seconds:.2f}s)")

    def _push(self, rep: int, state: dict, key: str) -> None:
        """Pushes the ds repo's workspace to a loopback hub started on first use."""
        tool = state["tools"].get("ds")
        if tool is None or not self.alive(rep, "ds"):
            return
        exe = tool.exe(self)
        if "hub" not in state:
            data = os.path.join(self.workdir, "hub")
            rmtree(data)
            p = subprocess.Popen([exe, "hub", "--listen", "127.0.0.1:0", "--data", data,
                                  "--gc-settle", "1"],
                                 stderr=subprocess.PIPE, text=True)
            url = None
            for line in p.stderr:
                if "listening on " in line:
                    url = line.split("listening on ", 1)[1].strip()
                    break
            if url is None:
                log("  ds hub did not start; push rows skipped")
                return
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            with open(os.path.join(data, "admin.token")) as f:
                state["hub"] = (p, url, f.read().strip())
        p, url, token = state["hub"]
        r = self.runner.run([exe, "--store", tool.repo, "push", "bench", "--hub", url,
                             "--token", token, "--json"], capture=True)
        if not r.ok:
            self.fail(rep, "ds", f"push ({key})", r)
            return
        rep_json = json.loads(r.stdout)
        v = self.values[rep]["ds"]
        v[f"push_{key}_s"] = r.seconds
        v[f"push_{key}_bytes"] = rep_json["bytes_sent"]
        v[f"push_{key}_rt"] = rep_json["round_trips"]
        self.extras[rep][f"ds_push_{key}_json"] = rep_json
        log(f"  push {key}: {human(rep_json['bytes_sent'])} in {r.seconds:.2f}s, "
            f"{rep_json['round_trips']} round trips")
        self._rsyncd(rep, state, key)
        if key == "cold":
            # A runner's first task: clone the whole workspace into an empty store.
            dest = os.path.join(self.workdir, "clone-store")
            rmtree(dest)
            r = self.runner.run([exe, "--store", dest, "clone", "bench", "--hub", url,
                                 "--token", token, "--json"], capture=True)
            if not r.ok:
                self.fail(rep, "ds", "clone (cold)", r)
            else:
                v["clone_cold_s"] = r.seconds
                log(f"  clone cold: {r.seconds:.2f}s")
            rmtree(dest)

    def _rsyncd(self, rep: int, state: dict, key: str) -> None:
        """The tool a user would otherwise pick to ship the tree: `rsync -a` into an rsync
        daemon on 127.0.0.1 writing under the workdir (same disk as the hub's storage)."""
        if not shutil.which("rsync"):
            return
        if "rsyncd" not in state:
            root = os.path.join(self.workdir, "rsyncd")
            rmtree(root)
            os.makedirs(os.path.join(root, "dest"))
            import socket
            with socket.socket() as sk:
                sk.bind(("127.0.0.1", 0))
                port = sk.getsockname()[1]
            conf = os.path.join(root, "rsyncd.conf")
            ids = "uid = 0\ngid = 0\n" if os.geteuid() == 0 else ""
            with open(conf, "w") as f:
                f.write(f"use chroot = no\n{ids}[bench]\npath = {root}/dest\nread only = no\n")
            p = subprocess.Popen(["rsync", "--daemon", "--no-detach", "--address", "127.0.0.1",
                                  "--port", str(port), "--config", conf],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            state["rsyncd"] = (p, port)
        _, port = state["rsyncd"]
        r = self.runner.run(["rsync", "-a", "--delete", self.corpus.rstrip("/") + "/",
                             f"rsync://127.0.0.1:{port}/bench/"])
        if r.ok:
            self.values[rep]["ds"][f"rsyncd_{key}_s"] = r.seconds
            log(f"  rsync -a into an rsync daemon on loopback ({key}): {r.seconds:.2f}s")
        else:
            log(f"  rsync daemon ({key}) failed: {r.stderr.strip()[:200]}")
        if key == "incr":
            p, _ = state.pop("rsyncd")
            p.terminate()
            p.wait()
            rmtree(os.path.join(self.workdir, "rsyncd"))

    def phase_push_cold(self, rep: int, state: dict) -> None:
        self._push(rep, state, "cold")

    def phase_push_incr(self, rep: int, state: dict) -> None:
        self._push(rep, state, "incr")

    def phase_gc(self, rep: int, state: dict) -> None:
        """50% garbage: random files as big as the corpus, snapshotted and forgotten, then each
        tool's collector (ds gc, restic prune, borg compact) and ds's hub gc (the same garbage
        pushed to the loopback hub, forgotten there, `ds gc --hub --grace 0s`, settle 1 s)."""
        garbage = os.path.join(self.workdir, "garbage")
        hub = state.pop("hub", None)
        try:
            rmtree(garbage)
            os.makedirs(garbage)
            rnd, left, i = random.Random(4242), self.corpus_bytes, 0
            while left > 0:
                n = min(64 * MiB, left)
                write_random(os.path.join(garbage, f"g{i:04}.bin"), rnd, n)
                left, i = left - n, i + 1
            ds = state["tools"].get("ds")
            if hub and ds is not None and self.alive(rep, "ds"):
                self._hub_gc(rep, ds, hub, garbage)
            for name in self.order(rep):
                tool = state["tools"].get(name)
                if tool is None or not self.alive(rep, name) or not hasattr(tool, "collect"):
                    continue
                r = tool.add_garbage(garbage)
                if not r.ok:
                    self.fail(rep, name, "adding 50% garbage", r)
                    continue
                before = tool.repo_bytes()
                r = tool.collect()
                if not r.ok:
                    self.fail(rep, name, "gc of 50% garbage", r)
                    continue
                v = self.values[rep][name]
                v["gc_s"] = r.seconds
                v["gc_freed"] = max(0, before - tool.repo_bytes())
                log(f"  {name} gc: {r.seconds:.2f}s")
        finally:
            if hub:
                hub[0].terminate()
                hub[0].wait()
            if "rsyncd" in state:
                state.pop("rsyncd")[0].terminate()
            rmtree(garbage)

    def _hub_gc(self, rep: int, tool: "Tool", hub: tuple, garbage: str) -> None:
        _, url, token = hub
        exe = tool.exe(self)
        store = os.path.join(self.workdir, "hub-gc-client")
        rmtree(store)
        auth = ["--hub", url, "--token", token]
        for cmd in (["snapshot", garbage, "--workspace", "garbage"], ["push", "garbage"] + auth,
                    ["forget", "garbage"] + auth):
            r = self.runner.run([exe, "--store", store] + cmd, measured=False)
            if not r.ok:
                self.fail(rep, "ds", f"hub gc setup ({cmd[0]})", r)
                return
        r = self.runner.run([exe, "--store", store, "gc", "--grace", "0s", "--json"] + auth, capture=True)
        rmtree(store)
        if not r.ok:
            self.fail(rep, "ds", "hub gc", r)
            return
        j = json.loads(r.stdout)
        v = self.values[rep]["ds"]
        v["hub_gc_s"] = r.seconds
        v["hub_gc_freed"] = j["bytes_freed"]
        self.extras[rep]["ds_hub_gc_json"] = j
        log(f"  ds hub gc: freed {human(j['bytes_freed'])} in {r.seconds:.2f}s")

    def _fuse_read(self, path: str) -> float:
        """Seconds to read a file sequentially in 1 MiB requests."""
        buf = bytearray(1 << 20)
        t = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
        return time.perf_counter() - t

    def _fuse_mounted(self, mp: str) -> bool:
        with open("/proc/self/mountinfo") as f:
            return any(line.split(" ")[4] == mp for line in f)

    def phase_fuse(self, rep: int, state: dict) -> None:
        """ds only: a read-only mount's sequential read against bindfs on the
        same data (both warm: each is read once, remounted, then measured),
        and the snapshot of a read-write mount after a 1 MiB overwrite inside
        one big file against a cold snapshot of that file."""
        tool = state["tools"].get("ds")
        if tool is None or not self.alive(rep, "ds"):
            return
        if not os.path.exists("/dev/fuse"):
            log("  /dev/fuse absent: FUSE rows skipped")
            return
        exe, v = tool.exe(self), self.values[rep]["ds"]
        mp = os.path.join(self.workdir, "fuse-mnt")
        os.makedirs(mp, exist_ok=True)
        files = [(os.path.getsize(p), p) for p in list_files(self.corpus)]
        size, big = max(files)
        rel = os.path.relpath(big, self.corpus)

        def ds_mount(*args):
            r = self.runner.run([exe, "--store", tool.repo, "mount", "--background", *args, mp],
                                measured=False)
            return r.ok

        def umount():
            subprocess.run([exe, "--store", tool.repo, "umount", mp], capture_output=True)
            if self._fuse_mounted(mp):
                subprocess.run(["fusermount3", "-uz", mp], capture_output=True)

        bindfs = shutil.which("bindfs")
        if not bindfs and not self.args.no_install:
            self.runner.run(["apt-get", "install", "-y", "-q", "bindfs"],
                            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), measured=False)
            bindfs = shutil.which("bindfs")
        if not bindfs:
            log("  bindfs not installed: no passthrough baseline")

        def read_ds(*opts):
            """(first read in a fresh mount, a second read in the same mount)"""
            if not ds_mount(*opts, "bench"):
                return None
            try:
                path = os.path.join(mp, rel)
                return self._fuse_read(path), self._fuse_read(path)
            finally:
                umount()

        def read_bindfs():
            subprocess.run([bindfs, self.corpus, mp], check=True)
            try:
                path = os.path.join(mp, rel)
                return self._fuse_read(path), self._fuse_read(path)
            finally:
                subprocess.run(["fusermount3", "-u", mp], check=True)

        # Each mount is fresh (nothing in its page cache) while the data
        # behind it is warm; the three are interleaved and repeated, and the
        # median kept, because one read of this size is at the mercy of noise.
        # The second read in the same mount shows what each keeps cached
        # across opens (ds: a snapshot never changes, so the kernel may).
        runs = {"ds": [], "direct": [], "bindfs": []}
        again = {"ds": [], "bindfs": []}
        read_ds()
        if bindfs:
            read_bindfs()
        for _ in range(3):
            for key, fn in (("ds", read_ds), ("bindfs", read_bindfs if bindfs else None),
                            ("direct", lambda: read_ds("--direct-io"))):
                secs = fn() if fn else None
                if secs:
                    runs[key].append(secs[0])
                    if key in again:
                        again[key].append(secs[1])
        for key, field in (("ds", "fuse_read_mibs"), ("direct", "fuse_direct_mibs"),
                           ("bindfs", "fuse_bindfs_mibs")):
            if runs[key]:
                v[field] = size / MiB / statistics.median(runs[key])
        for key, field in (("ds", "fuse_reread_mibs"), ("bindfs", "fuse_bindfs_reread_mibs")):
            if again[key]:
                v[field] = size / MiB / statistics.median(again[key])
        if "fuse_read_mibs" in v:
            log(f"  ds mount read {human(size)}: {v['fuse_read_mibs']:.0f} MiB/s; "
                f"--direct-io {v.get('fuse_direct_mibs', 0):.0f} MiB/s; "
                f"again in the same mount {v.get('fuse_reread_mibs', 0):.0f} MiB/s")
        if "fuse_bindfs_mibs" in v:
            self.versions["bindfs"] = "bindfs"
            log(f"  bindfs read: {v['fuse_bindfs_mibs']:.0f} MiB/s; "
                f"again in the same mount {v.get('fuse_bindfs_reread_mibs', 0):.0f} MiB/s")
        # One big file: cold snapshot into a fresh store, then the same file
        # mounted read-write, 1 MiB overwritten in its middle, snapshotted live.
        big_n = min(1 << 30, max(8 * MiB, self.args.size // 2))
        work = os.path.join(self.workdir, "fuse-big")
        rmtree(work)
        os.makedirs(os.path.join(work, "src"))
        write_random(os.path.join(work, "src", "checkpoint.bin"), random.Random(self.args.seed), big_n)
        store = os.path.join(work, "store")
        warm(os.path.join(work, "src"))
        r = self.runner.run([exe, "--store", store, "snapshot", "--workspace", "big", "--json",
                             os.path.join(work, "src")], capture=True)
        if not r.ok:
            self.fail(rep, "ds", "fuse cold snapshot", r)
            return
        v["fuse_cold_s"] = r.seconds
        rw = self.runner.run([exe, "--store", store, "mount", "--background", "--rw", "big", mp],
                             measured=False)
        if not rw.ok:
            self.fail(rep, "ds", "mount --rw", rw)
            return
        try:
            with open(os.path.join(mp, "checkpoint.bin"), "r+b") as f:
                f.seek(big_n // 2)
                f.write(random.Random(7).randbytes(MiB))
            r = self.runner.run([exe, "--store", store, "snapshot", "--workspace", "big", "--json", mp],
                                capture=True)
            if r.ok:
                v["fuse_rw_snap_s"] = r.seconds
                self.extras[rep]["ds_fuse_rw_snapshot_json"] = json.loads(r.stdout)
                log(f"  cold {v['fuse_cold_s']:.2f}s vs rw-mount snapshot {r.seconds:.3f}s "
                    f"({human(big_n)} file, 1 MiB overwritten)")
            else:
                self.fail(rep, "ds", "snapshot of rw mount", r)
        finally:
            subprocess.run([exe, "--store", store, "umount", mp], capture_output=True)
            if self._fuse_mounted(mp):
                subprocess.run(["fusermount3", "-uz", mp], capture_output=True)
            if not self.args.keep:
                rmtree(work)

    PHASES: list[str] = ["phase_limits", "phase_cold", "phase_push_cold", "phase_cold_dropped",
                         "phase_mutate", "phase_incremental", "phase_push_incr", "phase_restore",
                         "phase_ds_verify", "phase_gc", "phase_fuse"]

    def run_rep(self, rep: int) -> None:
        self.values.append({t: {} for t in self.tools})
        self.limits.append({})
        self.extras.append({})
        state: dict[str, Any] = {"tools": {}}
        try:
            for name in self.PHASES:
                log(f"rep {rep + 1}/{self.args.reps}: {name[6:]}")
                getattr(self, name)(rep, state)
        finally:
            if "mutation" in state:
                state["mutation"].revert()
                n, b = corpus_stats(self.corpus)
                self.meta["clean"] = (n, b) == (self.meta["files"], self.meta["bytes"])
                self.write_meta(self.meta)
            if not self.args.keep:
                for tool in state["tools"].values():
                    tool.cleanup()

    # ---- results -------------------------------------------------------------

    def aggregate(self) -> dict[str, dict[str, Any]]:
        """metric key -> tool -> median over reps (numbers) or the joined strings."""
        out: dict[str, dict[str, Any]] = {}
        for m in METRICS:
            row = {}
            for t in self.tools:
                vals = []
                for rep, per_tool in enumerate(self.values):
                    try:
                        x = m.get(per_tool[t], self)
                    except (KeyError, ZeroDivisionError, TypeError):
                        x = None
                    if x is not None:
                        vals.append(x)
                if not vals:
                    row[t] = "FAIL" if t in self.failed else None
                elif all(isinstance(x, (int, float)) for x in vals):
                    row[t] = statistics.median(vals)
                else:
                    row[t] = "/".join(dict.fromkeys(str(x) for x in vals))
            out[m.key] = row
        return out

    def limit_medians(self) -> dict[str, float]:
        keys = {k for d in self.limits for k in d}
        return {k: statistics.median([d[k] for d in self.limits if k in d]) for k in sorted(keys)}

    def table(self, agg, limits) -> tuple[str, dict]:
        peers = [t for t in self.tools if t != "ds"]
        has_ds = "ds" in self.tools
        limit_cols: list[str] = []
        for m in METRICS:
            for col, lk in m.limits.items():
                if lk in limits and col not in limit_cols:
                    limit_cols.append(col)
        header = ["metric"] + self.tools + ([f"ds/{p}" for p in peers] if has_ds else []) + (limit_cols if has_ds else [])
        rows, ratios = [], {}
        for m in METRICS:
            vals = agg[m.key]
            if all(vals.get(t) in (None, "FAIL") for t in self.tools):
                continue  # e.g. dropped-cache rows when not measured
            row = [m.label] + [fmt(vals.get(t)) for t in self.tools]
            ratios[m.key] = {}
            if has_ds:
                d = vals.get("ds")
                for p in peers:
                    x = vals.get(p)
                    ok = m.ratio and isinstance(d, (int, float)) and isinstance(x, (int, float)) and x
                    r = d / x if ok else None
                    ratios[m.key][f"ds/{p}"] = r
                    row.append(fmt(r))
                for col in limit_cols:
                    lk = m.limits.get(col)
                    r = d / limits[lk] if lk in limits and isinstance(d, (int, float)) else None
                    ratios[m.key][col] = r
                    row.append(fmt(r))
            rows.append(row)
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
                 for r in [header] + rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines), ratios


def fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 0.01:
        return f"{x:.2f}"
    return f"{x:.2g}"


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

HELP_EPILOG = """\
What is measured (each metric is the median over --reps repetitions; every repetition
uses fresh repositories, and the tool order rotates between repetitions):
  cold snapshot        first snapshot of the corpus into an empty repository, corpus
                       read once just before (page cache warm); time, CPU, peak RSS
  cold, caches dropped same into a second fresh repository right after
                       `sync; echo 3 > /proc/sys/vm/drop_caches` (--drop-caches, when
                       that file is writable)
  repo size            `du -sb`-style apparent size of the repository after the cold
                       snapshot (tool caches kept outside the repository are excluded:
                       restic cache, borg's ~/.cache, casync --cache)
  incremental          snapshot after the mutation; time, CPU, peak RSS, repository
                       growth, and growth / truly changed bytes (appended CSV rows +
                       overwritten checkpoint bytes + added files)
  restore              restore the incremental snapshot into an empty directory; time,
                       peak RSS; then every file is hashed and compared with the corpus
  limits               `cat` of every corpus file (page cache, and dropped caches with
                       --drop-caches) and `b3sum` (all threads and 1 thread) if
                       installed; ds throughput is divided by them (ds/cat, ds/b3sum);
                       `cp -a` of the corpus (page cache, no fsync), the floor of a
                       restore (ds/cp-a on the restore throughput row; goal >= 0.91,
                       i.e. a restore within 1.1x of cp -a)
Ratios are ds value / peer value for every numeric row (time: < 1 means ds is faster).
Peak RSS is ru_maxrss of the child from os.wait4. Timings are never asserted on.

Peers: restic (`restic backup`, password in RESTIC_PASSWORD), borg (`borg init
--encryption none`, `borg create --compression lz4`), casync (`casync make` with an
encoder --cache), rsync (`rsync -a` copy; incremental with --link-dest to the previous
copy). Missing peers are installed with `apt-get install -y` unless --no-install; a
peer that cannot be installed is reported as missing and skipped.

Exit status: 0 all ran and every restore was byte-identical; 1 a ds command failed
(including `ds verify`) or a restore differed; 2 usage; 3 ds fine but a peer failed.

Examples:
  python3 benches/harness.py --smoke
  nice -n 10 python3 benches/harness.py --size 2G --reps 3 --drop-caches
  python3 benches/harness.py --size 300M --tools ds,borg --nice -20 -v
"""


def default_ds() -> str:
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.expanduser("~/.cache/ds-target")
    return os.path.join(target, "debug", "ds")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="harness.py", description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
        epilog=HELP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=None,
                   help="corpus size, e.g. 2G, 300M, 16M (binary units; default 2G, 16M with --smoke). "
                        "Proportions: checkpoints 55%%, CSVs 40%%, small files 5%%")
    p.add_argument("--workdir", default="/var/tmp/ds-bench",
                   help="where the corpus, repositories and restores live (default /var/tmp/ds-bench). "
                        "The corpus is cached there and regenerated only if size/seed/generator change")
    p.add_argument("--seed", type=int, default=1, help="seed for the corpus and the mutation (default 1)")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3, 1 with --smoke)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run: --size 16M unless given, 1 repetition, every installed peer; "
                        "exit status still reflects ds failures and restore mismatches")
    p.add_argument("--tools", default=",".join(ALL_TOOLS),
                   help=f"comma-separated subset of {','.join(ALL_TOOLS)} (default: all)")
    p.add_argument("--ds", default=default_ds(),
                   help="ds binary (default $CARGO_TARGET_DIR/debug/ds, else ~/.cache/ds-target/debug/ds; "
                        "now %(default)s)")
    p.add_argument("--ds-compression", default=None, metavar="C",
                   help="pass --compression C to `ds init` (none, zstd, zstd:LEVEL; default: ds's own)")
    p.add_argument("--drop-caches", action="store_true",
                   help="also measure cold snapshots (and cat) after `sync; echo 3 > /proc/sys/vm/drop_caches`, "
                        "when writable (needs root)")
    p.add_argument("--nice", type=int, default=None, metavar="N",
                   help="prefix every measured command with `nice -n N` (e.g. --nice -20; default: no prefix)")
    p.add_argument("--no-install", action="store_true", help="never run apt-get; missing peers are skipped")
    p.add_argument("--regen", action="store_true", help="regenerate the corpus even if a cached one matches")
    p.add_argument("--keep", action="store_true", help="keep repositories and restores in the workdir")
    p.add_argument("--json-out", default=os.path.join(HERE, "results", "last.json"),
                   help="write results as JSON here (default benches/results/last.json)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every command; log full stderr")
    args = p.parse_args(argv)
    if args.size is None:
        args.size = 16 * MiB if args.smoke else 2 << 30
    if args.reps is None:
        args.reps = 1 if args.smoke else 3
    if args.reps < 1:
        p.error("--reps must be >= 1")
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    bad = [t for t in tools if t not in TOOL_CLASSES]
    if bad or not tools:
        p.error(f"unknown tool(s) {bad}; choose from {','.join(ALL_TOOLS)}")
    args.tools = [t for t in ALL_TOOLS if t in tools]
    args.ds = os.path.abspath(args.ds)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    h = Harness(args)
    os.makedirs(h.workdir, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    h.install()
    for t, why in h.missing.items():
        log(f"missing: {t} ({why})")
    if "ds" in args.tools and "ds" not in h.tools:
        log(f"ds binary not found at {args.ds}; build it with "
            "`CARGO_TARGET_DIR=~/.cache/ds-target cargo build -p ds-cli` or pass --ds")
    if not h.tools:
        log("no tool to run")
        return 1
    free = shutil.disk_usage(h.workdir).free
    if free < args.size * 8:
        log(f"warning: only {human(free)} free in {h.workdir}; a run needs up to ~8x the corpus size")
    h.prepare_corpus()
    h.check_drop_caches()
    h.rss_floor_mib = h.runner.run(["true"]).rss_mib
    for rep in range(args.reps):
        h.run_rep(rep)
    agg = h.aggregate()
    limits = h.limit_medians()
    table, ratios = h.table(agg, limits)

    ms = h.mutation_stats
    lines = [
        f"ds end-to-end benchmark: corpus {h.corpus_files} files, {human(h.corpus_bytes)} "
        f"(seed {args.seed}), {args.reps} rep(s), median shown"
        + (f", measured commands under nice -n {args.nice}" if args.nice is not None else ""),
        f"mutation: +{human(ms.get('appended_bytes', 0))} CSV rows, {human(ms.get('overwritten_bytes', 0))} "
        f"overwritten in a checkpoint, +{ms.get('added_files', 0)} files ({human(ms.get('added_bytes', 0))}), "
        f"-{ms.get('deleted_files', 0)} files; truly changed {human(ms.get('changed_bytes', 0))}",
        "",
        table,
        "",
        "limits (MiB/s): " + (", ".join(f"{k} {v:.0f}" for k, v in limits.items()) or "none")
        + ("" if shutil.which("b3sum") else "; b3sum not available")
        + ("" if h.can_drop else "; dropped-cache rows not measured"
           + ("" if args.drop_caches else " (no --drop-caches)")),
        f"peak RSS = ru_maxrss via os.wait4; measurement floor {h.rss_floor_mib:.1f} MiB "
        "(a value at the floor means 'at most this')",
        "versions: " + "; ".join(f"{v}" for v in h.versions.values()),
    ]
    if h.missing:
        lines.append("missing: " + ", ".join(f"{t} ({w})" for t, w in h.missing.items()))
    if any(isinstance(v, str) and "*" in v for v in agg.get("restore_ok", {}).values()):
        lines.append("yes*N: content identical, N permission-bit differences (see JSON)")
    for t, reasons in h.failed.items():
        lines.append(f"FAILED {t}: " + "; ".join(reasons[:3]))
    for t, errs in h.restore_mismatch.items():
        lines.append(f"RESTORE MISMATCH {t}: " + "; ".join(errs[:5]))
    report = "\n".join(lines)
    print(report, flush=True)

    result = {
        "started": started.isoformat(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "host": {"hostname": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
                 "mem_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                 "python": platform.python_version()},
        "args": {k: v for k, v in vars(args).items()},
        "corpus": {"path": h.corpus, "files": h.corpus_files, "bytes": h.corpus_bytes, "seed": args.seed},
        "mutation": ms,
        "tools": h.tools, "missing": h.missing, "versions": h.versions,
        "drop_caches_measured": h.can_drop,
        "rss_floor_mib": h.rss_floor_mib,
        "limits_mib_s": limits,
        "limits_per_rep": h.limits,
        "metrics": [{"key": m.key, "label": m.label} for m in METRICS],
        "median": agg,
        "ratios": ratios,
        "per_rep": h.values,
        "extras_per_rep": h.extras,
        "failed": h.failed,
        "restore_mismatch": h.restore_mismatch,
        "report": report,
    }
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2, default=str)
        log(f"wrote {args.json_out}")

    if "ds" in h.failed or ("ds" in args.tools and "ds" in h.missing) or h.restore_mismatch:
        return 1
    if h.failed:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
