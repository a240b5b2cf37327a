#!/usr/bin/env bash
# Installs JupyterLab into a venv under ~/.cache the first time (from PyPI,
# pinned), for the test that runs it on a runner and uses it through the
# hub's relay in a browser.
#
# Usage: eval "$(scripts/jupyter.sh)"   -> exports DS_TEST_JUPYTER (the jupyter binary)
set -euo pipefail
VENV=${DS_JUPYTER_VENV:-$HOME/.cache/ds-jupyter}
if [ ! -x "$VENV/bin/jupyter-lab" ]; then
  if ! python3 -m venv "$VENV" >&2 2>/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV" >&2
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check 'jupyterlab==4.4.5' 'ipykernel==6.30.1' >&2
fi
echo "export DS_TEST_JUPYTER=$VENV/bin/jupyter"
