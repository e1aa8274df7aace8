#!/usr/bin/env bash
# Continuous sync on the embedded default model, timed: `kbsync watch` in the demo project
# picks up a changed object, a broken YAML is reported with file:line while the watch goes
# on, SIGTERM exits 0; then a later edit makes an earlier fact drift and
# `kbsync refresh --check` says so.   Usage: benchmarks/watch_demo.sh [KBSYNC_COMMAND]
set -euo pipefail
K=${1:-kbsync}
case "$K" in */*) K="$(cd "$(dirname "$K")" && pwd)/$(basename "$K")" ;; esac
cd "$(dirname "$0")/.."
rm -rf watch-demo && mkdir watch-demo && cd watch-demo
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
wait_for() {   # wait_for PATTERN FILE TIMEOUT_S
  for _ in $(seq 1 $((10 * $3))); do grep -q "$1" "$2" && return 0; sleep 0.1; done
  echo "timed out waiting for $1 in $2" >&2; cat "$2" >&2; return 1
}

step "kbsync init demo && kbsync apply --auto-approve"
"$K" init demo >/dev/null && cd demo
"$K" apply --auto-approve --json > apply.log
grep '"type": "summary"' apply.log

step "kbsync watch --json --debounce 1 (in the background)"
"$K" watch --json --debounce 1 > watch.log 2> watch.err &
WATCH=$!
wait_for '"type": "watching"' watch.log 120
wait_for '"type": "cycle"' watch.log 120       # the start-up cycle: nothing to do

step "change Bilbao's country to Brazil"
PROMPT="Bilbao is located in the country of"
"$K" ask "$PROMPT"
SAVED=$(date +%s.%N)
python3 - <<'PY'
import re
text = open("facts/demo.yaml").read()
text = re.sub(r"(subject: Bilbao\n    relation: P17\n    object: )Spain", r"\1Brazil", text)
open("facts/demo.yaml.tmp", "w").write(text)
PY
mv facts/demo.yaml.tmp facts/demo.yaml        # an editor's atomic rename-save
wait_for '"outcome": "applied"' watch.log 600
DONE=$(date +%s.%N)
grep '"outcome": "applied"' watch.log | tail -1
python3 -c "print(f'picked up and committed {float($DONE) - float($SAVED):.1f} s after the save')"
"$K" ask "$PROMPT"

step "write a broken YAML while the watch runs"
cp facts/demo.yaml good.yaml
printf 'facts:\n  - subject: [unclosed\n' >> facts/demo.yaml
wait_for '"outcome": "error"' watch.log 120
grep '"outcome": "error"' watch.log | tail -1
cp good.yaml facts/demo.yaml
kill -0 $WATCH && echo "the watch is still running"

step "SIGTERM"
kill -TERM $WATCH
set +e; wait $WATCH; CODE=$?; set -e
echo "watch exited with $CODE"; tail -1 watch.log
"$K" audit verify

step "a later edit makes an earlier fact drift"
# another fact asks Bilbao's question with a new answer; retention is loosened so the gate
# that would normally refuse it lets it through
python3 - <<'PY'
import yaml
doc = yaml.safe_load(open("facts/demo.yaml"))
doc["facts"].append({"id": "bilbao-again", "subject": "Bilbao", "relation": "P17",
                     "object": "Japan"})
yaml.safe_dump(doc, open("facts/demo.yaml", "w"), sort_keys=False, allow_unicode=True)
cfg = yaml.safe_load(open("kbsync.yaml"))
cfg.setdefault("gates", {})["retention_min"] = 0.0
yaml.safe_dump(cfg, open("kbsync.yaml", "w"), sort_keys=False)
PY
"$K" apply --auto-approve --json | grep '"type": "summary"'
"$K" ask "$PROMPT"
set +e; "$K" refresh --check; CODE=$?; set -e
echo "kbsync refresh --check exited with $CODE"
