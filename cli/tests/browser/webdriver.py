"""A small W3C WebDriver client over plain HTTP (urllib), for driving
Debian's headless chromium through chromedriver in the browser tests: no
selenium, nothing downloaded at test time."""
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Browser:
    def __init__(self, shots):
        self.shots = shots
        os.makedirs(shots, exist_ok=True)
        self.n = 0
        self.session = None
        port = free_port()
        self.driver = subprocess.Popen(
            ["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                self.call("GET", "/status")
                break
            except Exception:
                time.sleep(0.1)
        else:
            raise RuntimeError("chromedriver did not start")
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
        self.session = self.call("POST", "/session", caps)["sessionId"]

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return json.loads(r.read() or b"{}").get("value")
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"webdriver {method} {path}: {e.code} {e.read()[:500]!r}")

    def s(self, path):
        return f"/session/{self.session}{path}"

    def go(self, url):
        self.call("POST", self.s("/url"), {"url": url})

    def url(self):
        return self.call("GET", self.s("/url"))

    def fail(self, msg):
        self.shot("failure")
        print(msg, file=sys.stderr)
        sys.exit(1)

    def find(self, css, timeout=20, must=True):
        end = time.time() + timeout
        while True:
            try:
                v = self.call("POST", self.s("/element"), {"using": "css selector", "value": css})
                return list(v.values())[0]
            except RuntimeError:
                if time.time() > end:
                    if not must:
                        return None
                    self.fail(f"no element {css!r} on {self.url()}")
                time.sleep(0.2)

    def text(self, el):
        return self.call("GET", self.s(f"/element/{el}/text"))

    def wait_text(self, css, want, timeout=30):
        end = time.time() + timeout
        last = ""
        while time.time() < end:
            el = self.find(css, timeout=2, must=False)
            if el is not None:
                try:
                    last = self.text(el)
                except RuntimeError:
                    last = ""  # replaced while read
                if want in last:
                    return last
            time.sleep(0.3)
        self.fail(f"{css!r} never showed {want!r} (last: {last[:300]!r})")

    def click(self, css, timeout=20):
        """Clicks the element, retrying while the page is still laying it
        out (not yet interactable, replaced, covered)."""
        end = time.time() + timeout
        while True:
            try:
                self.call("POST", self.s(f"/element/{self.find(css, timeout)}/click"), {})
                return
            except RuntimeError as e:
                if time.time() > end:
                    self.fail(f"cannot click {css!r}: {e}")
                time.sleep(0.3)

    def type(self, css, value):
        el = self.find(css)
        self.call("POST", self.s(f"/element/{el}/clear"), {})
        self.call("POST", self.s(f"/element/{el}/value"), {"text": value})

    def script(self, js, *args):
        return self.call("POST", self.s("/execute/sync"), {"script": js, "args": list(args)})

    def shot(self, name):
        if self.session is None:
            return
        try:
            png = self.call("GET", self.s("/screenshot"))
        except Exception:
            return
        self.n += 1
        path = os.path.join(self.shots, f"{self.n:02d}-{name}.png")
        with open(path, "wb") as f:
            f.write(base64.b64decode(png))
        print("screenshot", path)

    def close(self):
        if self.session:
            try:
                self.call("DELETE", f"/session/{self.session}")
            except Exception:
                pass
        self.driver.terminate()


def login(b, hub, token):
    b.go(hub + "/#/login")
    b.type("#token", token)
    b.click("#login button")
    b.find("#workspaces", timeout=30)
