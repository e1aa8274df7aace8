"""The one registry: editors by name, with what each brings (its side-memory kind), and
the regularisers every weight editor takes. Targets are imported lazily, so `kbsync plan`
never loads torch. An editor's hyperparameters are `hparams/<name>.yaml` (hparams.py)."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import NamedTuple

from kbsync.errors import EditorError

class Method(NamedTuple):
    target: str                  # "module:callable" making the editor from its HParams
    summary: str                 # `kbsync editors`' line
    memory: str | None = None    # a side-memory editor's "module:Class" (a SideMemory whose
                                 # kind is the editor's name): what a snapshot reloads


EDITORS: dict[str, Method] = {
    "memit": Method("kbsync.editing.memit:MEMIT",
        "MEMIT: batched least-squares edit spread over several MLP layers"),
    "alphaedit": Method("kbsync.editing.alphaedit:AlphaEdit",
        "AlphaEdit: MEMIT projected onto the null space of preserved keys, remembers past "
        "edits"),
    "encore": Method("kbsync.editing.encore:ENCORE",
        "ENCORE: MEMIT with most-probable early stopping, a Frobenius penalty on the "
        "update and a memory of past edits' keys"),
    "lyaplock": Method("kbsync.editing.lyaplock:LyapLock",
        "LyapLock: MEMIT-style solve anchored to the original weights, preservation "
        "weighted by a virtual queue of accumulated preservation loss"),
    "lyaplock+memit": Method("kbsync.editing.lyaplock:with_memit",
        "LyapLock's queue setting MEMIT's preservation weight λ"),
    "lyaplock+alphaedit": Method("kbsync.editing.lyaplock:with_alphaedit",
        "LyapLock's queue weighting a preservation term in AlphaEdit's null-space solve"),
    "rome": Method("kbsync.editing.rome:ROME",
        "ROME: rank-one edit of one MLP layer, C⁻¹k key; batches applied one by one"),
    "nmke": Method("kbsync.editing.nmke:NMKE",
        "NMKE: AlphaEdit's update masked to the FFN neurons attribution picks "
        "(knowledge-general + knowledge-specific, entropy-sized)"),
    "rlsedit": Method("kbsync.editing.rlsedit:RLSEdit",
        "RLSEdit: MEMIT's front end, every past edit's keys in a recursive least-squares "
        "inverse updated by Woodbury (cost per edit flat in history)"),
    "ultraedit": Method("kbsync.editing.ultraedit:UltraEdit",
        "UltraEdit: closed-form ridge edit from gradient features under lifelong "
        "normalisation; no subject, no target optimisation"),
    "grace": Method("kbsync.editing.side.grace:GRACE",
        "GRACE: side codebook at one layer; a token near a stored key gets its trained "
        "value (deferral radii grow and split)",
        memory="kbsync.editing.side.grace:GraceMemory"),
    "wise": Method("kbsync.editing.side.wise:WISE",
        "WISE: side copy of one FFN out-projection behind an activation router; edits in "
        "masked shards, TIES-merged",
        memory="kbsync.editing.side.wise:WiseMemory"),
    "case": Method("kbsync.editing.side.case:CASE",
        "CASE (reconstructed): conflict-assessed subspaces of Fisher-chosen neurons with "
        "new output columns, routed by sketched keys; < 1 MB per 1,000 edits",
        memory="kbsync.editing.side.case:CaseMemory"),
}

# options of every weight editor (regularize.py): `regularizer: <name>` in the hparams,
# or the editor name `<editor>+<name>` (memit+rect, alphaedit+prune, ...)
REGULARIZERS: dict[str, str] = {
    "rect": "RECT: keeps only the largest relative weight changes of each batch's update",
    "prune": "PRUNE: log-restrains the singular values of the accumulated update above "
             "the original matrix's largest",
    "nas": "NAS: norm-anchor scaling, each target value vector rescaled to the norm of "
           "the first batch's (arXiv 2602.02543)",
}


def editor_names() -> dict[str, str]:
    names = {name: method.summary for name, method in EDITORS.items()}
    names.update({f"<editor>+{reg}": desc for reg, desc in REGULARIZERS.items()})
    return names


def make_editor(name: str, model_config, overrides: dict | None = None):
    from kbsync.editing.hparams import resolve_hparams

    # memit+rect = memit with regularizer: rect; a registered name (lyaplock+memit) is an editor
    name, _, reg = name.rpartition("+") if name not in EDITORS and "+" in name else (name, "", "")
    if name not in EDITORS:
        raise EditorError(f"unknown editor {name!r}", hint=f"choose one of: {', '.join(EDITORS)}")
    if reg:
        if reg not in REGULARIZERS:
            raise EditorError(f"unknown regularizer {reg!r}",
                              hint=f"choose one of: {', '.join(REGULARIZERS)}")
        asked = (overrides or {}).get("regularizer")
        if asked not in (None, reg):
            raise EditorError(f"editor {name}+{reg} but hparams say regularizer: {asked}",
                              hint="name the regularizer in one place")
        overrides = {**(overrides or {}), "regularizer": reg}
    return load_target(EDITORS[name].target)(resolve_hparams(name, model_config, overrides))


def load_target(where: str):
    """The object a "module:name" string names."""
    module, name = where.split(":")
    return getattr(import_module(module), name)


def side_memory_targets() -> dict[str, str]:
    """Side-memory kind -> "module:Class", from the editors that bring one."""
    return {name: method.memory for name, method in EDITORS.items() if method.memory}


MEASURED = Path(__file__).resolve().parents[1] / "data" / "editors-measured.yaml"


def measured_tradeoffs() -> dict[str, list[dict]]:
    """Per editor, the runs benchmarks/RESULTS.md reports on the default model (copied into
    kbsync/data/editors-measured.yaml, which names each one's section): what `kbsync
    editors` prints next to the summaries. Editors never measured have no entry."""
    import yaml

    return yaml.safe_load(MEASURED.read_text(encoding="utf-8")) or {}


def tradeoff_line(run: dict) -> str:
    """One measured run as a short line: `500 CounterFact edits (batch 10): efficacy 0.98,
    generalization 0.86, locality 0.67, ppl drift +0.172, 2.21 s/edit`."""
    dataset = {"counterfact": "CounterFact", "zsre": "zsRE"}.get(run["dataset"], run["dataset"])
    note = f" ({run['note']})" if run.get("note") else ""
    return (f"{run['edits']:,} {dataset} edits (batch {run['batch']}): efficacy "
            f"{run['efficacy']:.2f}, generalization {run['generalization']:.2f}, locality "
            f"{run['locality']:.2f}, ppl drift {run['ppl_drift']:+.3f}, "
            f"{run['s_per_edit']:g} s/edit{note}")
