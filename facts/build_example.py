#!/usr/bin/env python3
"""Build the example knowledge bases in facts/ from the CounterFact / ROME data.

Developer tool: reads the benchmark files once and writes plain fact files; kbsync itself
never reads the benchmark data. Deterministic: the same inputs give the same files.

    python3 facts/build_example.py                     # pool + demo (80 facts)
    python3 facts/build_example.py --keep keys.txt     # demo = exactly these pool keys
    python3 facts/build_example.py --keep-key "Google Maps/P178" --keep-key ...

Inputs (under --data, default /work/shared/data):
  rome_knowns/known_1000_augmented.json   ROME "known facts": subject, relation_id,
                                          template, attribute (true object), and which
                                          large models answer it ("known" flags)
  counterfact/easyedit/counterfact-edit.json
                                          CounterFact cases: prompt, subject,
                                          ground_truth (true object), rephrase_prompt,
                                          locality_prompt, locality_ground_truth

Outputs (next to this script):
  relations.yaml                 templates for every relation in the pool
  pool/counterfact_true.yaml     ~400 true facts (uses relations.yaml)
  demo/relations.yaml            the demo's relations
  demo/demo.yaml                 80 demo facts (or --keep)
  demo.ttl                       the demo facts in Turtle (uses demo/relations.yaml)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a source checkout without installing

from kbsync.facts.rdf_write import write_rdf  # noqa: E402
from kbsync.facts.schema import Fact, KnowledgeBase, LocalityProbe, Relation  # noqa: E402
from kbsync.facts.yaml_io import dump_yaml  # noqa: E402

KNOWN = "rome_knowns/known_1000_augmented.json"
COUNTERFACT = "counterfact/easyedit/counterfact-edit.json"

# Wikidata labels of the relations that occur in the data.
LABELS = {
    "P17": "country", "P19": "place of birth", "P20": "place of death",
    "P27": "country of citizenship", "P30": "continent", "P36": "capital",
    "P37": "official language", "P39": "position held", "P101": "field of work",
    "P103": "native language", "P106": "occupation", "P108": "employer",
    "P127": "owned by", "P131": "located in the administrative territorial entity",
    "P136": "genre", "P138": "named after", "P140": "religion",
    "P159": "headquarters location", "P176": "manufacturer", "P178": "developer",
    "P190": "twinned administrative body", "P264": "record label", "P276": "location",
    "P364": "original language of film or TV show", "P407": "language of work or name",
    "P413": "position played on team / speciality", "P449": "original broadcaster",
    "P463": "member of", "P495": "country of origin", "P641": "sport",
    "P740": "location of formation", "P937": "work location", "P1303": "instrument",
    "P1412": "languages spoken, written or signed",
}
TEMPLATES_PER_RELATION = 4
MIN_TAIL = 5        # drop templates like "{}, in": too little context to ask for anything
SOURCE = "CounterFact / ROME known_1000 (kmeng01/rome, MIT)"


@dataclass
class Candidate:
    subject: str
    relation: str
    object: str
    known_by: int = -1                  # how many reference models answer it; -1: unknown
    mentions: int = 0                   # how often the subject occurs in the data: fame proxy
    paraphrases: list[str] = field(default_factory=list)
    locality: list[tuple[str, str]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.subject}/{self.relation}"

    def fact(self) -> Fact:
        return Fact(subject=self.subject, relation=self.relation, object=self.object,
                    paraphrases=self.paraphrases,
                    locality=[LocalityProbe(prompt=p, answer=a) for p, a in self.locality])


def load(data: Path) -> tuple[list[dict], list[dict]]:
    return (json.loads((data / KNOWN).read_text()), json.loads((data / COUNTERFACT).read_text()))


def relation_templates(known: list[dict], cases: list[dict]) -> tuple[dict, dict]:
    """Per relation, its templates by frequency; and template -> relation for the
    templates that belong to exactly one relation (used to label CounterFact cases)."""
    owners: dict[str, set[str]] = defaultdict(set)
    for row in known:
        owners[row["template"]].add(row["relation_id"])
    unique = {t: next(iter(r)) for t, r in owners.items() if len(r) == 1}
    counts: dict[str, Counter] = defaultdict(Counter)
    for row in known:
        counts[row["relation_id"]][row["template"]] += 1
    for case in cases:  # CounterFact prompts that use a known template count too
        template = case["prompt"].replace(case["subject"], "{}", 1)
        if template in unique:
            counts[unique[template]][template] += 1
    templates = {}
    for rid, counter in counts.items():
        # Most used first, but a prompt ending in "," invites anything, not the object.
        ranked = sorted(counter, key=lambda t: (t.endswith(","), -counter[t], t))
        good = [t for t in ranked if len(t.replace("{}", "").strip(" ,")) >= MIN_TAIL]
        templates[rid] = [t.replace("{}", "{subject}") for t in (good or ranked)][
            :TEMPLATES_PER_RELATION]
    return templates, unique


def candidates(known: list[dict], cases: list[dict], unique: dict) -> dict[str, Candidate]:
    models = [k for k in known[0] if "/" in k]
    found: dict[str, Candidate] = {}
    for row in known:
        c = Candidate(row["subject"].strip(), row["relation_id"], row["attribute"].strip(),
                      known_by=sum(bool(row[m]) for m in models))
        found.setdefault(c.key, c)
    conflicting = set()
    for case in cases:
        rid = unique.get(case["prompt"].replace(case["subject"], "{}", 1))
        if rid is None:
            continue
        subject, obj = case["subject"].strip(), case["ground_truth"].strip()
        c = found.setdefault(f"{subject}/{rid}", Candidate(subject, rid, obj))
        if c.object != obj:
            conflicting.add(c.key)  # the sources disagree on the truth: leave it out
            continue
        if not c.paraphrases:
            c.paraphrases = [case["rephrase_prompt"].strip()]
            c.locality = [(case["locality_prompt"].strip(),
                           case["locality_ground_truth"].strip())]
    kept = {k: c for k, c in found.items() if k not in conflicting and usable(c)}
    counts = mention_counts(cases, known)
    for c in kept.values():
        c.mentions = counts[c.subject]
    return kept


def mention_counts(cases: list[dict], known: list[dict], longest: int = 8) -> Counter:
    """Word n-gram counts over every prompt in the data (subjects are n-grams)."""
    counts: Counter = Counter()
    texts = [case[f] for case in cases for f in ("prompt", "rephrase_prompt", "locality_prompt")]
    texts += [row["prompt"] for row in known]
    for text in texts:
        words = text.split()
        for n in range(1, longest + 1):
            counts.update(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
    return counts


def usable(c: Candidate) -> bool:
    texts = [c.subject, c.object, *c.paraphrases, *(x for pair in c.locality for x in pair)]
    return (all(texts) and not any("{" in t or "}" in t for t in texts)
            and c.subject != c.object and c.relation in LABELS)


def round_robin(groups: dict[str, list[Candidate]], size: int) -> list[Candidate]:
    """Take one from each relation in turn, so every relation is represented."""
    chosen, queues = [], {rid: list(items) for rid, items in sorted(groups.items())}
    while len(chosen) < size and any(queues.values()):
        for rid in sorted(queues, key=_natural):
            if queues[rid] and len(chosen) < size:
                chosen.append(queues[rid].pop(0))
    return chosen


def by_relation(items, key) -> dict[str, list[Candidate]]:
    groups: dict[str, list[Candidate]] = defaultdict(list)
    for c in sorted(items, key=key):
        groups[c.relation].append(c)
    return groups


def pool_priority(c: Candidate) -> tuple:
    # Facts with paraphrases and locality probes first, then better-known ones.
    return (not c.paraphrases, -c.known_by, -c.mentions, len(c.subject), c.key)


def demo_priority(c: Candidate) -> tuple:
    # Often-mentioned, short subjects that every reference model answers.
    return (not c.paraphrases, -c.known_by, -c.mentions, len(c.subject), c.key)


def _natural(rid: str) -> tuple:
    return (int(rid[1:]) if rid[1:].isdigit() else 10**9, rid)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    shown = path.relative_to(HERE.parent) if path.is_relative_to(HERE.parent) else path
    print(f"wrote {shown}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--pool-size", type=int, default=400)
    parser.add_argument("--demo-size", type=int, default=80)
    parser.add_argument("--keep", type=Path, help="file with one pool key per line: the demo")
    parser.add_argument("--keep-key", action="append", default=[], help="a pool key to keep")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)

    known, cases = load(args.data)
    templates, unique = relation_templates(known, cases)
    found = candidates(known, cases, unique)
    pool = round_robin(by_relation(found.values(), pool_priority), args.pool_size)
    pool_keys = {c.key for c in pool}
    keep = list(args.keep_key)
    if args.keep:
        keep += [line.strip() for line in args.keep.read_text().splitlines() if line.strip()]
    if keep:
        missing = [k for k in keep if k not in pool_keys]
        if missing:
            parser.error(f"not in the pool: {missing[:5]}")
        demo = [c for c in pool if c.key in set(keep)]
    else:
        well_known = [c for c in pool if c.known_by == max(x.known_by for x in pool)]
        demo = round_robin(by_relation(well_known, demo_priority), args.demo_size)

    relations = {rid: Relation(id=rid, label=LABELS[rid], templates=templates[rid])
                 for rid in sorted({c.relation for c in pool}, key=_natural)}
    demo_relations = [relations[rid] for rid in relations if rid in {c.relation for c in demo}]
    pool_facts = [c.fact() for c in sorted(pool, key=lambda c: (_natural(c.relation), c.key))]
    demo_facts = [c.fact() for c in sorted(demo, key=lambda c: (_natural(c.relation), c.key))]
    note = (f"Generated by facts/build_example.py from {SOURCE}.\n"
            "Edit the script, not this file; see facts/SOURCES.md.")
    out = args.out
    write(out / "relations.yaml", dump_yaml(relations.values(), header=note))
    write(out / "pool" / "counterfact_true.yaml", dump_yaml(facts=pool_facts, header=note +
          "\nRelations are defined in facts/relations.yaml."))
    write(out / "demo" / "relations.yaml", dump_yaml(demo_relations, header=note))
    write(out / "demo" / "demo.yaml", dump_yaml(facts=demo_facts, header=note))
    demo_kb = KnowledgeBase(relations={r.id: r for r in demo_relations},
                            facts={f.key: f for f in demo_facts})
    write(out / "demo.ttl", write_rdf(demo_kb, "turtle", include_relations=False, header=(
        note + "\nThe demo facts of demo/demo.yaml in Turtle; relations come from "
        "demo/relations.yaml\n(wdt:P17 is relation P17).")))
    print(f"pool: {len(pool_facts)} facts, {len(relations)} relations; "
          f"demo: {len(demo_facts)} facts, {len(demo_relations)} relations")


if __name__ == "__main__":
    main()
