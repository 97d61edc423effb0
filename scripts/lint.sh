#!/usr/bin/env bash
# Static checks: ruff (lint), mypy --strict (types), import-linter (layers). Run after scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/mypy nsm_sdk nsc_sidecar nse_sidecar nsm_agent nsm_local nsm_topo
.venv/bin/lint-imports
