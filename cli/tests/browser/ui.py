#!/usr/bin/env python3
"""Drives the hub's web UI in headless Chromium through chromedriver (the
W3C WebDriver protocol over plain HTTP: no selenium, no downloads).

Usage: ui.py HUB_URL TOKEN WORKSPACE TASK_ID LIMITED_TOKEN SCREENSHOT_DIR

Logs in with TOKEN, opens the workspace, its snapshot log, its runs (table
and chart), a run's page with its provenance graph, the task's page with
its live log, and the relay's "open" link; then logs in with
LIMITED_TOKEN and checks the UI shows only what that token may see. Saves
a screenshot of every page. Exits non-zero with a message on the first
thing that is not as expected.
"""
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

HUB, TOKEN, WS, TASK, LIMITED, SHOTS = sys.argv[1:7]
os.makedirs(SHOTS, exist_ok=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


PORT = free_port()
DRIVER = subprocess.Popen(
    ["chromedriver", f"--port={PORT}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
)
BASE = f"http://127.0.0.1:{PORT}"


def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        BASE + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read() or b"{}").get("value")
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"webdriver {method} {path}: {e.code} {e.read()[:500]!r}")


def wait_driver():
    for _ in range(200):
        try:
            call("GET", "/status")
            return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError("chromedriver did not start")


def fail(msg):
    shot("failure")
    print("ui.py: " + msg, file=sys.stderr)
    sys.exit(1)


SESSION = None


def s(path):
    return f"/session/{SESSION}{path}"


def go(url):
    call("POST", s("/url"), {"url": url})


def find(css, timeout=20, must=True):
    end = time.time() + timeout
    while True:
        try:
            v = call("POST", s("/element"), {"using": "css selector", "value": css})
            return list(v.values())[0]
        except RuntimeError:
            if time.time() > end:
                if not must:
                    return None
                fail(f"no element {css!r} on {call('GET', s('/url'))}")
            time.sleep(0.2)


def text(el):
    return call("GET", s(f"/element/{el}/text"))


def wait_text(css, want, timeout=30):
    end = time.time() + timeout
    last = ""
    while time.time() < end:
        el = find(css, timeout=2, must=False)
        if el is not None:
            try:
                last = text(el)
            except RuntimeError:
                last = ""  # replaced while read
            if want in last:
                return last
        time.sleep(0.3)
    fail(f"{css!r} never showed {want!r} (last: {last[:300]!r})")


def click(css):
    call("POST", s(f"/element/{find(css)}/click"), {})


def typ(css, value):
    el = find(css)
    call("POST", s(f"/element/{el}/clear"), {})
    call("POST", s(f"/element/{el}/value"), {"text": value})


def script(js, *args):
    return call("POST", s("/execute/sync"), {"script": js, "args": list(args)})


n = [0]


def shot(name):
    if SESSION is None:
        return
    try:
        png = call("GET", s("/screenshot"))
    except Exception:
        return
    n[0] += 1
    path = os.path.join(SHOTS, f"{n[0]:02d}-{name}.png")
    with open(path, "wb") as f:
        f.write(base64.b64decode(png))
    print("screenshot", path)


def login(token):
    go(HUB + "/#/login")
    typ("#token", token)
    click("#login button")
    find("#workspaces", timeout=30)


try:
    wait_driver()
    caps = {
        "capabilities": {
            "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,900"],
                },
            }
        }
    }
    SESSION = call("POST", "/session", caps)["sessionId"]

    # Without a session the UI asks to log in.
    go(HUB + "/")
    find("#login")
    shot("login")
    # A wrong token is refused with the hub's message.
    typ("#token", "ds_wrong")
    click("#login button")
    wait_text("#login .error", "token")
    login(TOKEN)
    shot("workspaces")
    wait_text("#workspaces", WS)
    # The cookie is HttpOnly: no page script can read it.
    if "ds_session" in (script("return document.cookie") or ""):
        fail("the session cookie is readable by scripts")

    click(f"#workspaces a[href='#/w/{WS}']")
    wait_text("#snapshots", "Snapshot")
    shot("snapshots")
    # The newest snapshot's tree, then a file of it.
    click("#snapshots tbody tr:first-child a.snap")
    wait_text("#tree", "model.txt")
    shot("tree")
    click("#tree a[href$='/model.txt']")
    wait_text("#file", "model 0.01")
    find("a.download")
    shot("file")
    # The diff of the first run's snapshot with the pushed one: it added
    # model.txt.
    go(HUB + f"/#/w/{WS}")
    click("#snapshots tbody tr:nth-last-child(2) a.diff")
    wait_text("#diff", "model.txt")
    shot("diff")

    go(HUB + f"/#/w/{WS}/runs")
    wait_text("#runs", "accuracy")
    find("#chart svg circle")
    shot("runs")
    # Sorting by a column reorders the table.
    click("#runs th.sortable:nth-child(2)")
    find("#runs th.sorted")
    click("#runs tbody tr td a")
    find("#provenance .node.run")
    edges = script("return document.querySelectorAll('#provenance .edge').length")
    if not edges or edges < 2:
        fail(f"the provenance graph has {edges} edges")
    shot("run")

    go(HUB + f"/#/t/{TASK}")
    wait_text("#log", "serving")
    shot("task")
    go(HUB + "/#/tasks")
    click(f"#tasks a.open[href='/tasks/{TASK}/']")
    wait_text("body", "GET / HTTP/1.1")
    shot("relay")

    # A token limited to another workspace sees none of this one.
    go(HUB + "/#/login")
    login(LIMITED)
    body = text(find("#main"))
    if WS in body:
        fail(f"a token limited elsewhere sees workspace {WS}: {body[:300]!r}")
    go(HUB + f"/#/w/{WS}")
    wait_text("#error", WS)
    shot("limited")
    go(HUB + f"/tasks/{TASK}/")
    if "GET / HTTP/1.1" in text(find("body")):
        fail("a token limited elsewhere reaches the task through the relay")
    print("ui.py: all checks passed")
finally:
    if SESSION:
        try:
            call("DELETE", f"/session/{SESSION}")
        except Exception:
            pass
    DRIVER.terminate()
