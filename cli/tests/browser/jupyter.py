#!/usr/bin/env python3
"""Opens JupyterLab, running as a task on a runner, through the hub's relay
in headless Chromium, runs a notebook's cell and waits for its output (the
kernel's websocket goes through the relay too).

Usage: jupyter.py HUB_URL TOKEN TASK_ID NOTEBOOK SCREENSHOT_DIR
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from webdriver import Browser, login  # noqa: E402

HUB, TOKEN, TASK, NOTEBOOK, SHOTS = sys.argv[1:6]
b = Browser(SHOTS)
try:
    login(b, HUB, TOKEN)
    b.go(f"{HUB}/tasks/{TASK}/lab/tree/{NOTEBOOK}")
    b.find(".jp-Notebook .jp-Cell", timeout=120)
    # The kernel started (through the relay's websocket) and is idle.
    b.wait_text(".jp-StatusBar-Widget, #jp-main-statusbar", "Idle", timeout=120)
    b.shot("jupyterlab")
    b.click(".jp-Notebook .jp-Cell .jp-InputArea-editor", timeout=60)
    # Shift+Enter in the cell's editor: run it (the toolbar may still be
    # drawing on a busy machine).
    editor = b.find(".jp-Notebook .jp-Cell .cm-content", timeout=60)
    b.call("POST", b.s(f"/element/{editor}/value"), {"text": "\ue008\ue007"})
    if b.find(".jp-OutputArea-output", timeout=60, must=False) is None:
        b.click("[data-command='notebook:run-cell-and-select-next']", timeout=60)
    b.wait_text(".jp-OutputArea-output", "42", timeout=120)
    b.shot("jupyterlab-output")
    print("jupyter.py: the cell ran through the relay")
finally:
    b.close()
