"""Benchmark records from the copies in benchmarks/data (sources: benchmarks/data/SOURCES.md).

Each record becomes a `Case`: the edit, and the prompts it is scored on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kbsync.editing.request import EditSpec

DATA = Path(__file__).resolve().parents[2] / "benchmarks" / "data"


@dataclass(frozen=True)
class Case:
    spec: EditSpec
    rewrite: str             # rendered rewrite prompt
    paraphrase: str
    neighbour: str           # a locality prompt
    true: str                # the old object (CounterFact) or gold answer of the neighbour (zsRE)
    neighbour_answer: str


def _template(prompt: str, subject: str) -> str | None:
    at = prompt.find(subject)
    return None if at < 0 else prompt[:at] + "{subject}" + prompt[at + len(subject):]


def counterfact(n: int, offset: int = 0) -> list[Case]:
    cases = []
    for rec in json.loads((DATA / "counterfact-edit.json").read_text())[offset:]:
        template = _template(rec["prompt"], rec["subject"])
        if template is None:
            continue
        spec = EditSpec(template, rec["subject"], rec["target_new"], key=str(rec["case_id"]))
        cases.append(Case(spec, rec["prompt"], rec["rephrase_prompt"], rec["locality_prompt"],
                          rec["ground_truth"], rec["locality_ground_truth"]))
        if len(cases) == n:
            break
    return cases


def zsre(n: int, offset: int = 0) -> list[Case]:
    cases = []
    for i, rec in enumerate(json.loads((DATA / "zsre-1037.json").read_text())[offset:]):
        template = _template(rec["src"], rec["subject"])
        if template is None:
            continue
        spec = EditSpec(template, rec["subject"], rec["alt"], key=f"zsre-{offset + i}")
        cases.append(Case(spec, rec["src"], rec["rephrase"], rec["loc"], rec["pred"], rec["loc_ans"]))
        if len(cases) == n:
            break
    return cases


DATASETS = {"counterfact": counterfact, "zsre": zsre}
