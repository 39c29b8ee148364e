#!/usr/bin/env bash
# Sets up .venv with the dev tools, then lints, type-checks and runs the whole test suite.
# Tests read real photos from $TILLFACE_FACES (default ../shared/faces-dev).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
.venv/bin/ruff check daemon tests scripts
.venv/bin/ruff format --check daemon tests scripts
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
