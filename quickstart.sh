#!/usr/bin/env bash
# One command on a fresh machine (as root): install everything, then run the two-device example.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh
./scripts/demo.sh
