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
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from webdriver import Browser, login  # noqa: E402

HUB, TOKEN, WS, TASK, LIMITED, SHOTS = sys.argv[1:7]
b = Browser(SHOTS)
go, find, text, wait_text, click, typ, script, shot = (
    b.go, b.find, b.text, b.wait_text, b.click, b.type, b.script, b.shot)


def fail(msg):
    b.fail("ui.py: " + msg)


try:
    # Without a session the UI asks to log in.
    go(HUB + "/")
    find("#login")
    shot("login")
    # A wrong token is refused with the hub's message.
    typ("#token", "ds_wrong")
    click("#login button")
    wait_text("#login .error", "token")
    login(b, HUB, TOKEN)
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
    # Inputs and outputs carry their content ids.
    labels = script("return [...document.querySelectorAll('#provenance .node text')].map(t => t.textContent)")
    if not any(l.startswith("model.txt ") for l in labels):
        fail(f"no output with its content id among {labels}")
    go(HUB + f"/#/w/{WS}/models")
    wait_text("#models", "iris")
    shot("models")

    go(HUB + f"/#/t/{TASK}")
    wait_text("#log", "serving")
    shot("task")
    go(HUB + "/#/tasks")
    click(f"#tasks a.open[href='/tasks/{TASK}/']")
    wait_text("body", "GET / HTTP/1.1")
    shot("relay")

    # A token limited to another workspace sees none of this one.
    go(HUB + "/#/login")
    login(b, HUB, LIMITED)
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
    b.close()
