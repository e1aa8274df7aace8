"""Plan speed at scale (issue 22, item 4): N synthetic facts as YAML, Turtle and N-Triples.

For each format and N, writes one fact file (relations included) into a temporary
project, then times

* plain load: the parser alone (`yaml.load(f, Loader=yaml.CSafeLoader)`, or rdflib's
  `Graph().parse`), the floor kbsync's reader is measured against; once as is, once with
  Python's cyclic garbage collector off (kbsync's readers pause it, see
  kbsync.facts.source.gc_paused; with it on, the plain load of a large file is mostly
  collector work);
* kbsync load: `load_knowledge_base(facts/)` (parse, checks, validation, merge);
* plan: `compute_plan(project)` against an empty store (every fact an add), as
  `kbsync plan` computes it, without printing the lines;

and prints one table row per run, each time as `wall / CPU` seconds (the CPU time of
this process: on a shared machine the wall time also counts waiting for a core):
ratio = plan / plain load, ratio (GC off) = plan / plain load with the collector off.
The facts are deterministic (a seeded generator): every 10th fact has a paraphrase and a
locality probe (a kb:Statement in RDF), and objects repeat, as they do in real
knowledge bases. The kbsync timed is the one imported (PYTHONPATH), so an older
checkout's kbsync/ can be measured the same way.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/plan_scale.py
    .venv/bin/python benchmarks/plan_scale.py -n 1000 -n 5000 --format yaml

Best of --repeat runs (default 1; the machine these figures come from is shared).
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

RELATIONS = {
    "P17": ("country", "{subject} is located in the country of"),
    "P19": ("place of birth", "{subject} was born in"),
    "P27": ("country of citizenship", "{subject} is a citizen of"),
    "P36": ("capital", "The capital of {subject} is"),
    "P37": ("official language", "The official language of {subject} is"),
    "P101": ("field of work", "{subject} works in the field of"),
    "P103": ("native language", "The mother tongue of {subject} is"),
    "P106": ("occupation", "{subject} works as a"),
    "P127": ("owned by", "{subject} is owned by"),
    "P131": ("located in", "{subject} is located in"),
    "P136": ("genre", "{subject} plays"),
    "P138": ("named after", "{subject} is named after"),
    "P159": ("headquarters", "The headquarters of {subject} is in"),
    "P176": ("manufacturer", "{subject} is produced by"),
    "P178": ("developer", "{subject} was developed by"),
    "P264": ("record label", "{subject} is signed to"),
    "P276": ("location", "{subject} is in"),
    "P407": ("language of work", "{subject} was written in"),
    "P449": ("original network", "{subject} was first aired on"),
    "P495": ("country of origin", "{subject} comes from"),
}
_SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "tor", "bel", "su", "an", "dre", "is", "ol",
              "mar", "que", "zu", "fen", "gar", "ny", "pol", "ek", "ri", "sa", "tha", "ur"]
FORMATS = {"yaml": "kb.yaml", "turtle": "kb.ttl", "nt": "kb.nt"}


def synthetic_facts(n: int, seed: int = 0) -> list[dict]:
    """n facts with unique subjects; deterministic for a given (n, seed)."""
    rng = random.Random(seed)

    def word(parts: int) -> str:
        return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()

    objects = [f"{word(2)} {word(3)}" for _ in range(max(50, n // 50))]
    relations = sorted(RELATIONS)
    facts = []
    for i in range(n):
        fact = {"subject": f"{word(2)} {word(2)} {i}", "relation": rng.choice(relations),
                "object": rng.choice(objects)}
        if i % 10 == 0:
            fact["paraphrases"] = [f"People who know {fact['subject']} say it belongs to"]
            fact["locality"] = [{"prompt": f"{rng.choice(objects)} is related to",
                                 "answer": rng.choice(objects)}]
        facts.append(fact)
    return facts


def _q(text: str) -> str:
    """A YAML/Turtle/N-Triples double-quoted string (the generator's text is plain ASCII)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _iri(text: str) -> str:
    return "https://kbsync.dev/entity/" + text.replace(" ", "_")


def to_yaml(facts: list[dict]) -> str:
    lines = ["version: 1", "relations:"]
    for rid, (label, template) in RELATIONS.items():
        lines.append(f"  {rid}: {{label: {_q(label)}, templates: [{_q(template)}]}}")
    lines.append("facts:")
    for f in facts:
        lines += [f"  - subject: {_q(f['subject'])}", f"    relation: {f['relation']}",
                  f"    object: {_q(f['object'])}"]
        if "paraphrases" in f:
            lines.append("    paraphrases:")
            lines += [f"      - {_q(p)}" for p in f["paraphrases"]]
            lines.append("    locality:")
            for probe in f["locality"]:
                lines += [f"      - prompt: {_q(probe['prompt'])}",
                          f"        answer: {_q(probe['answer'])}"]
    return "\n".join(lines) + "\n"


def to_turtle(facts: list[dict]) -> str:
    lines = ["@prefix rdf: <http://www.w3.org/1999/02/22-rdf-syntax-ns#> .",
             "@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .",
             "@prefix kb: <https://kbsync.dev/ns#> .",
             "@prefix wdt: <http://www.wikidata.org/prop/direct/> .",
             "@prefix ent: <https://kbsync.dev/entity/> .",
             "@prefix fact: <https://kbsync.dev/fact/> .", ""]
    for rid, (label, template) in RELATIONS.items():
        lines.append(f"wdt:{rid} a kb:Relation ; rdfs:label {_q(label)} ; "
                     f"kb:templates ( {_q(template)} ) .")
    labelled = set()
    for i, f in enumerate(facts):
        s, o = f"ent:{f['subject'].replace(' ', '_')}", f"ent:{f['object'].replace(' ', '_')}"
        lines.append(f"{s} rdfs:label {_q(f['subject'])} ; wdt:{f['relation']} {o} .")
        if f["object"] not in labelled:
            labelled.add(f["object"])
            lines.append(f"{o} rdfs:label {_q(f['object'])} .")
        if "paraphrases" in f:
            probes = " ".join(f"[ kb:prompt {_q(p['prompt'])} ; kb:answer {_q(p['answer'])} ]"
                              for p in f["locality"])
            lines.append(f"fact:s{i} a kb:Statement ; kb:subject {s} ; "
                         f"kb:relation wdt:{f['relation']} ; kb:object {o} ;\n"
                         f"    kb:paraphrases ( {' '.join(map(_q, f['paraphrases']))} ) ;\n"
                         f"    kb:locality ( {probes} ) .")
    return "\n".join(lines) + "\n"


def to_ntriples(facts: list[dict]) -> str:
    rdf = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
    rdfs = "http://www.w3.org/2000/01/rdf-schema#"
    kb, wdt = "https://kbsync.dev/ns#", "http://www.wikidata.org/prop/direct/"
    lines, blank = [], iter(range(10 ** 9))

    def rdf_list(node: str, predicate: str, items: list[str]) -> None:
        cells = [f"_:b{next(blank)}" for _ in items]
        for i, (cell, item) in enumerate(zip(cells, items)):
            rest = cells[i + 1] if i + 1 < len(cells) else f"<{rdf}nil>"
            lines.extend([f"{cell} <{rdf}first> {item} .", f"{cell} <{rdf}rest> {rest} ."])
        lines.append(f"{node} <{predicate}> {cells[0]} .")

    for rid, (label, template) in RELATIONS.items():
        p = f"<{wdt}{rid}>"
        lines += [f"{p} <{rdf}type> <{kb}Relation> .", f"{p} <{rdfs}label> {_q(label)} ."]
        rdf_list(p, f"{kb}templates", [_q(template)])
    labelled = set()
    for i, f in enumerate(facts):
        s, o, p = f"<{_iri(f['subject'])}>", f"<{_iri(f['object'])}>", f"<{wdt}{f['relation']}>"
        lines += [f"{s} <{rdfs}label> {_q(f['subject'])} .", f"{s} {p} {o} ."]
        if f["object"] not in labelled:
            labelled.add(f["object"])
            lines.append(f"{o} <{rdfs}label> {_q(f['object'])} .")
        if "paraphrases" in f:
            node = f"<https://kbsync.dev/fact/s{i}>"
            lines += [f"{node} <{rdf}type> <{kb}Statement> .", f"{node} <{kb}subject> {s} .",
                      f"{node} <{kb}relation> {p} .", f"{node} <{kb}object> {o} ."]
            rdf_list(node, f"{kb}paraphrases", [_q(x) for x in f["paraphrases"]])
            probes = []
            for probe in f["locality"]:
                cell = f"_:b{next(blank)}"
                lines += [f"{cell} <{kb}prompt> {_q(probe['prompt'])} .",
                          f"{cell} <{kb}answer> {_q(probe['answer'])} ."]
                probes.append(cell)
            rdf_list(node, f"{kb}locality", probes)
    return "\n".join(lines) + "\n"


WRITERS: dict[str, Callable[[list[dict]], str]] = {"yaml": to_yaml, "turtle": to_turtle,
                                                    "nt": to_ntriples}


def make_project(root: Path, fmt: str, facts: list[dict]) -> Path:
    """A kbsync project at root with the facts in one file; returns the file."""
    (root / "facts").mkdir(parents=True)
    (root / ".kbsync").mkdir()
    (root / "kbsync.yaml").write_text("model: default\nfacts: facts\n", encoding="utf-8")
    path = root / "facts" / FORMATS[fmt]
    path.write_text(WRITERS[fmt](facts), encoding="utf-8")
    return path


def plain_load(path: Path, fmt: str, *, collector: bool = True) -> object:
    was = gc.isenabled()
    if not collector:
        gc.disable()
    try:
        return _plain_load(path, fmt)
    finally:
        if was:
            gc.enable()


def _plain_load(path: Path, fmt: str) -> object:
    if fmt == "yaml":
        import yaml

        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=yaml.CSafeLoader)
    from rdflib import Graph

    return Graph().parse(path, format=fmt)


def timed(fn: Callable[[], object], repeat: int) -> tuple[tuple[float, float], object]:
    """((wall s, CPU s) of the fastest run, its result)."""
    best, result = (float("inf"), float("inf")), None
    for _ in range(repeat):
        result = None
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best, result


def run(fmt: str, n: int, repeat: int) -> dict:
    from kbsync.facts import load as load_module
    from kbsync.facts.load import load_knowledge_base
    from kbsync.project import Project, compute_plan

    clear_cache = getattr(load_module, "clear_cache", lambda: None)   # older kbsync: none

    def load():
        clear_cache()      # a load from scratch, not the previous run's knowledge base
        return load_knowledge_base(root / "facts")

    def plan():
        clear_cache()
        return compute_plan(Project(root))

    facts = synthetic_facts(n)
    with tempfile.TemporaryDirectory(prefix="kbsync-plan-scale-") as tmp:
        root = Path(tmp) / "proj"
        path = make_project(root, fmt, facts)
        plain, _ = timed(lambda: plain_load(path, fmt), repeat)
        plain_off, _ = timed(lambda: plain_load(path, fmt, collector=False), repeat)
        load_s, kb = timed(load, repeat)
        assert len(kb.facts) == n, (fmt, n, len(kb.facts))
        del kb
        plan_s, result = timed(plan, repeat)
        assert len(result.requests) == n
        clear_cache()
        return {"format": fmt, "n": n, "bytes": path.stat().st_size, "plain": plain,
                "plain_off": plain_off, "load": load_s, "plan": plan_s,
                "ratio": tuple(a / b for a, b in zip(plan_s, plain)),
                "ratio_off": tuple(a / b for a, b in zip(plan_s, plain_off))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, action="append",
                        help="fact counts (repeatable; default 16000 and 100000)")
    parser.add_argument("--format", action="append", choices=sorted(FORMATS),
                        help="formats (repeatable; default all)")
    parser.add_argument("--repeat", type=int, default=1, help="best of this many runs")
    args = parser.parse_args(argv)
    header = ("| format | N | file MB | plain load s | plain load, GC off s | kbsync load s "
              "| plan s | ratio | ratio (GC off) |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for fmt in args.format or list(FORMATS):
        for n in args.n or [16_000, 100_000]:
            row = run(fmt, n, args.repeat)
            cells = [row["format"], f"{row['n']:,}", f"{row['bytes'] / 1e6:.1f}"]
            cells += [f"{row[k][0]:.2f} / {row[k][1]:.2f}"
                      for k in ("plain", "plain_off", "load", "plan", "ratio", "ratio_off")]
            print("| " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
