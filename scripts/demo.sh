#!/usr/bin/env bash
# The daemon's main job on an embedded default, no camera needed: a replay of one customer visiting
# twice, made from a public-domain portrait shipped in a registry package (scikit-image).
#   1st run: the gallery is empty, so she is a visitor and gets a code on the display.
#   Then she is enrolled from her photo (with consent, in a real store via the CRM).
#   2nd run: the same replay, and she is recognised as member-0001.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
tf=.venv/bin/tillface
cfg=config/demo.toml
state=.tillface-state
rm -f "$state/gallery.tfg" "$state/events.jsonl"
$tf check-config "$cfg"
$tf init --config "$cfg"
$tf demo-replay --out "$state/demo-visits" | tee "$state/demo-replay.txt"
photos=$(sed -n 's/^photos folder for the enrolment: //p' "$state/demo-replay.txt")

echo "== run 1: empty gallery"
$tf run --config "$cfg" --events-jsonl "$state/events.jsonl"
echo "== enrolment from a consented photo"
$tf gallery import --config "$cfg" --images "$photos" --labels "$state/demo-visits/enrol.csv"
echo "== run 2: the same customer comes back"
$tf run --config "$cfg" --events-jsonl "$state/events.jsonl"
echo "== events ($state/events.jsonl)"
cat "$state/events.jsonl"
