#!/usr/bin/env bash
# The README's demo on the embedded default model: init, apply the example knowledge base
# (already-known facts need no edit), change three objects, plan, apply, ask, log, audit,
# rollback, ask again.   Usage: benchmarks/demo.sh [KBSYNC_COMMAND]
set -euo pipefail
K=${1:-kbsync}
case "$K" in */*) K="$(cd "$(dirname "$K")" && pwd)/$(basename "$K")" ;; esac   # we cd below
PY=$(dirname "$(command -v "$K" 2>/dev/null || echo python3)")/python3
[ -x "$PY" ] || PY=python3
cd "$(dirname "$0")/.."
rm -rf demo
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "kbsync init demo"
"$K" init demo
cd demo

step "kbsync apply --auto-approve   (the example facts: most are already known)"
"$K" apply --auto-approve
FIRST=$("$K" log --json | "$PY" -c 'import json,sys; print([e for e in map(json.loads, sys.stdin) if e["kind"]=="snapshot"][0]["id"])')

step "change three objects in facts/demo.yaml"
"$PY" - <<'PY' > demo-changes.txt
import yaml
path = "facts/demo.yaml"
doc = yaml.safe_load(open(path))
rel = yaml.safe_load(open("facts/relations.yaml"))["relations"]
# three facts the default model already knows, and their new objects
changes = {"Bilbao/P17": "Brazil", "Pierre Alcover/P103": "English",
           "Julian Huxley/P20": "Paris"}
for fact in doc["facts"]:
    new = changes.get(f"{fact['subject']}/{fact['relation']}")
    if new:
        prompt = rel[fact["relation"]]["templates"][0].format(subject=fact["subject"])
        print(f"{prompt}\t{fact['object']}\t{new}")
        fact["object"] = new
yaml.safe_dump(doc, open(path, "w"), sort_keys=False, allow_unicode=True)
PY
cut -f1-3 demo-changes.txt | sed 's/\t/  |  /g'

step "kbsync plan"
"$K" plan || true

step "kbsync apply --auto-approve"
"$K" apply --auto-approve

step "kbsync ask   (new answers)"
while IFS=$'\t' read -r prompt old new; do "$K" ask "$prompt"; done < demo-changes.txt

step "kbsync log"
"$K" log

step "kbsync audit verify"
"$K" audit verify

step "kbsync rollback ${FIRST:0:12}"
"$K" rollback "$FIRST"

step "kbsync ask   (old answers back)"
while IFS=$'\t' read -r prompt old new; do "$K" ask "$prompt"; done < demo-changes.txt
