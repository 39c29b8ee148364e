#!/usr/bin/env bash
# The whole system on this machine, no camera and no root (apt aside): scripts/setup.sh, then
# `tillface demo`, which starts its own mosquitto on a free port, the store server (SQLite), one unit on
# a replay camera (one customer visiting three times, rendered from a public-domain portrait shipped in
# scikit-image) and the customer display on a pseudo-terminal whose 2x20 screen it prints as it changes:
#   visit 1: a stranger gets a visitor code; the cashier enrols her with POST /members (consent);
#   visit 2: she is recognised and the store greets her by name with her points; POST /receipts adds some;
#   visit 3: the display shows her new points.
# It stops everything it started and exits 0 if the story happened (about 30 s after set-up). State
# and logs: .tillface-state/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/tillface demo --state .tillface-state/demo "$@"
