#!/usr/bin/env bash
# Set up everything napari-patchdiff needs on a fresh machine, idempotently:
#   1. Debian packages for a real (virtual) display, when running as root with apt-get;
#   2. a virtual environment in $VENV (default .venv);
#   3. the CPU build of torch first, unless the environment already has a torch
#      (a plain `pip install torch` would pull a multi-GB CUDA build);
#   4. the package itself, editable, with its Qt, test, Ray and docs extras (MkDocs for the
#      documentation site, which the tests build).
# Re-running it after pyproject.toml changes reinstalls the package; otherwise it does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    need=""
    for pkg in xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"
    done
    if [ -n "$need" ]; then
        echo "[setup] installing Debian packages:$need"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
    fi
elif ! command -v Xvfb >/dev/null 2>&1; then
    echo "[setup] note: Xvfb is missing and this is not root; napari GUI tests will be skipped" >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PIP="$VENV/bin/python -m pip"

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    echo "[setup] installing $TORCH_SPEC (CPU build)"
    $PIP install -q "$TORCH_SPEC"
fi

stamp="$VENV/.napari-patchdiff-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "[setup] installing napari-patchdiff with extras [qt,test,ray,docs]"
    $PIP install -q -e ".[qt,test,ray,docs]"
    touch "$stamp"
fi
