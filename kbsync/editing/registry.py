"""Editors by name. Imported lazily so `kbsync plan` never loads torch."""

from __future__ import annotations

from importlib import import_module

from kbsync.errors import EditorError

EDITORS: dict[str, tuple[str, str]] = {
    "memit": ("kbsync.editing.memit:MEMIT",
              "MEMIT: batched least-squares edit spread over several MLP layers"),
    "alphaedit": ("kbsync.editing.alphaedit:AlphaEdit",
                  "AlphaEdit: MEMIT projected onto the null space of preserved keys, "
                  "remembers past edits"),
}


def editor_names() -> dict[str, str]:
    return {name: desc for name, (_, desc) in EDITORS.items()}


def make_editor(name: str, model_config, overrides: dict | None = None):
    from kbsync.editing.hparams import resolve_hparams

    if name not in EDITORS:
        raise EditorError(f"unknown editor {name!r}", hint=f"choose one of: {', '.join(EDITORS)}")
    module, cls = EDITORS[name][0].split(":")
    return getattr(import_module(module), cls)(resolve_hparams(name, model_config, overrides))
