#!/usr/bin/env python3
"""Relay benchmarks: a task's HTTP server reached through the hub's relay
(browser -> hub -> the runner's outbound HTTP/2 link -> the task's port)
against the same server reached directly, and against rathole (a NAT
tunnel, when `rathole` is on PATH: `cargo install rathole`) in the same run.

  latency     sequential GETs of a 1 KiB response (keep-alive on the
              client side; the relay opens one tunnel per request)
  throughput  sequential GETs of a 1 MiB response, MB/s
  parallel    8 clients at once, 1 MiB responses, MB/s in all
  websockets  --conns upgraded connections held open through the relay at
              once, each echoing a message; the hub's RSS while they are
              open (goal: 1,000 connections on this machine)

Python 3 standard library only; a real `ds hub` and `ds runner` (process
executor). Prints a table and, with --json-out, JSON. No threshold is
asserted: these machines are noisy.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tasks import Proc, ds_bin, runner_token, start_hub, start_runner  # noqa: E402

SERVER = r'''
import socket, sys, threading
KB, MB = b"k" * 1024, b"m" * (1 << 20)
def handle(c):
    f = c.makefile("rb")
    try:
        while True:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                b = f.readline()
                if not b: return
                head += b
            if b"upgrade: echo" in head.lower():
                c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
                while True:
                    d = f.read1(65536)
                    if not d: return
                    c.sendall(d)
            body = MB if head.startswith(b"GET /1m") else KB
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    except OSError:
        pass
    finally:
        c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(4096)
print("serving", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
'''


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Client:
    """Keep-alive HTTP/1.1 GETs against host:port with a path prefix."""

    def __init__(self, hostport: str, prefix: str, token: str | None):
        host, port = hostport.split(":")
        self.c = http.client.HTTPConnection(host, int(port), timeout=60)
        self.prefix = prefix
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str) -> int:
        self.c.request("GET", self.prefix + path, headers=self.headers)
        r = self.c.getresponse()
        n = len(r.read())
        if r.status != 200:
            raise SystemExit(f"GET {self.prefix}{path}: {r.status}")
        return n


def latency_ms(mk, n: int) -> float:
    c = mk()
    c.get("/1k")
    t = time.perf_counter()
    for _ in range(n):
        c.get("/1k")
    return (time.perf_counter() - t) / n * 1000


def throughput_mbs(mk, n: int) -> float:
    c = mk()
    c.get("/1m")
    t = time.perf_counter()
    got = sum(c.get("/1m") for _ in range(n))
    return got / (time.perf_counter() - t) / 1e6


def parallel_mbs(mk, n: int, threads: int = 8) -> float:
    got = [0] * threads

    def work(i: int) -> None:
        c = mk()
        got[i] = sum(c.get("/1m") for _ in range(n))

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    t = time.perf_counter()
    for x in ts:
        x.start()
    for x in ts:
        x.join()
    return sum(got) / (time.perf_counter() - t) / 1e6


def websockets(hostport: str, path: str, token: str, conns: int, hub_pid: int) -> dict[str, float]:
    host, port = hostport.split(":")
    socks = []
    t = time.perf_counter()
    for i in range(conns):
        s = socket.create_connection((host, int(port)), timeout=60)
        s.sendall((f"GET {path} HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer {token}\r\n"
                   "Connection: Upgrade\r\nUpgrade: echo\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            b = s.recv(1)
            if not b:
                raise SystemExit(f"connection {i} closed during the upgrade")
            head += b
        if not head.startswith(b"HTTP/1.1 101"):
            raise SystemExit(f"connection {i}: {head[:100]!r}")
        socks.append(s)
    opened = time.perf_counter() - t
    t = time.perf_counter()
    for s in socks:
        s.sendall(b"ping")
    for s in socks:
        got = b""
        while len(got) < 4:
            got += s.recv(4 - len(got))
        assert got == b"ping"
    echoed = time.perf_counter() - t
    rss = rss_mib(hub_pid)
    for s in socks:
        s.close()
    return {"ws_conns": conns, "ws_open_s": opened, "ws_echo_all_s": echoed, "ws_hub_rss_mib": rss}


def rathole(port: int, tmp: str) -> tuple[list[subprocess.Popen], int] | None:
    """A rathole server and client forwarding a local port to the task's
    server, as a NAT tunnel would; None when rathole is not installed."""
    exe = shutil.which("rathole") or os.path.expanduser("~/.cargo/bin/rathole")
    if not os.path.exists(exe):
        return None
    ctrl, public = free_port(), free_port()
    server = os.path.join(tmp, "rathole-server.toml")
    client = os.path.join(tmp, "rathole-client.toml")
    with open(server, "w") as f:
        f.write(f'[server]\nbind_addr = "127.0.0.1:{ctrl}"\n[server.services.web]\n'
                f'token = "bench"\nbind_addr = "127.0.0.1:{public}"\n')
    with open(client, "w") as f:
        f.write(f'[client]\nremote_addr = "127.0.0.1:{ctrl}"\n[client.services.web]\n'
                f'token = "bench"\nlocal_addr = "127.0.0.1:{port}"\n')
    ps = [subprocess.Popen([exe, "--server", server], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
          subprocess.Popen([exe, "--client", client], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    for _ in range(100):
        try:
            Client(f"127.0.0.1:{public}", "", None).get("/1k")
            return ps, public
        except Exception:
            time.sleep(0.1)
    for p in ps:
        p.kill()
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300, help="sequential 1 KiB GETs (default 300)")
    ap.add_argument("--mib", type=int, default=200, help="sequential 1 MiB GETs (default 200)")
    ap.add_argument("--conns", type=int, default=1000, help="websocket connections held (default 1000)")
    ap.add_argument("--json-out", help="write the results here as JSON")
    a = ap.parse_args()
    ds = ds_bin()
    tmp = tempfile.mkdtemp(prefix="ds-bench-relay.")
    env = dict(os.environ, DS_STORE=os.path.join(tmp, "me"))
    env.pop("DS_TOKEN", None)
    env.pop("DS_HUB", None)
    procs: list[Proc] = []
    extra: list[subprocess.Popen] = []
    results: dict[str, float] = {}
    try:
        hub, url, admin = start_hub(ds, tmp, env)
        procs.append(hub)
        henv = dict(env, DS_HUB=url, DS_TOKEN=admin)
        work = os.path.join(tmp, "work")
        os.makedirs(work)
        with open(os.path.join(work, "srv.py"), "w") as f:
            f.write(SERVER)
        subprocess.run([ds, "snapshot", work, "-w", "relay"], env=env, check=True, capture_output=True)
        subprocess.run([ds, "push", "relay"], env=henv, check=True, capture_output=True)
        r = start_runner(ds, url, runner_token(ds, henv), os.path.join(tmp, "cache"), env,
                         ["--executor", "process"])
        procs.append(r)
        port = free_port()
        task = json.loads(subprocess.run(
            [ds, "run", "-d", "--json", "-w", "relay", "--port", str(port), "--executor", "process",
             "--", "python3", "srv.py", str(port)],
            env=henv, check=True, capture_output=True, text=True).stdout)["task"]
        hubport = url.removeprefix("http://")
        prefix = f"/tasks/{task}"
        for _ in range(300):
            try:
                Client(hubport, prefix, admin).get("/1k")
                break
            except (SystemExit, OSError, http.client.HTTPException):
                time.sleep(0.2)
        direct = lambda: Client(f"127.0.0.1:{port}", "", None)  # noqa: E731
        relayed = lambda: Client(hubport, prefix, admin)  # noqa: E731
        peers = {"direct": direct, "relay": relayed}
        rh = rathole(port, tmp)
        if rh:
            extra.extend(rh[0])
            peers["rathole"] = lambda: Client(f"127.0.0.1:{rh[1]}", "", None)  # noqa: E731
        for name, mk in peers.items():
            results[f"{name}_1k_latency_ms"] = latency_ms(mk, a.requests)
            results[f"{name}_1m_mbs"] = throughput_mbs(mk, a.mib)
            results[f"{name}_1m_parallel_mbs"] = parallel_mbs(mk, max(a.mib // 8, 4))
        results.update(websockets(hubport, f"{prefix}/ws", admin, a.conns, hub.p.pid))
        results["hub_rss_after_mib"] = rss_mib(hub.p.pid)
        subprocess.run([ds, "task", "cancel", task], env=henv, capture_output=True)
    finally:
        for p in extra:
            p.kill()
        for p in procs:
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'':<28} {'1 KiB latency':>14} {'1 MiB seq':>12} {'1 MiB x8':>12}")
    for name in ["direct", "relay", "rathole"]:
        if f"{name}_1k_latency_ms" not in results:
            print(f"{name:<28} {'(not installed: cargo install rathole)':>40}")
            continue
        print(f"{name:<28} {results[name + '_1k_latency_ms']:11.2f} ms {results[name + '_1m_mbs']:7.0f} MB/s "
              f"{results[name + '_1m_parallel_mbs']:7.0f} MB/s")
    d = results
    print(f"relay / direct: latency {d['relay_1k_latency_ms'] / d['direct_1k_latency_ms']:.1f}x, "
          f"throughput {d['relay_1m_mbs'] / d['direct_1m_mbs']:.2f}x")
    if "rathole_1m_mbs" in d:
        print(f"relay / rathole: latency {d['relay_1k_latency_ms'] / d['rathole_1k_latency_ms']:.1f}x, "
              f"throughput {d['relay_1m_mbs'] / d['rathole_1m_mbs']:.2f}x")
    print(f"{d['ws_conns']} websocket connections through the relay: opened in {d['ws_open_s']:.2f} s, "
          f"all echoed in {d['ws_echo_all_s']:.2f} s, hub RSS {d['ws_hub_rss_mib']:.0f} MiB while open")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
