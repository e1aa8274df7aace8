"""The model and editor memory of a snapshot: the base model plus every patch along the
snapshot's chain, root first; the editor's state is the fold of `accept` over the same
patches. Rebuilt exactly, whatever process made them.

The editing layer does not import the store (layers point down: tests/test_layers.py); the
project passed in brings its snapshots (`project.snapshots()`, a SnapshotStore)."""

from __future__ import annotations

from kbsync.editing.contract import Editor
from kbsync.editing.patch import load_patch
from kbsync.editing.registry import make_editor
from kbsync.editing.side.memory import attach_memory_tensors
from kbsync.errors import IntegrityError
from kbsync.lm.load import LoadedModel, load_model


def load_at(project, snapshot_id: str | None, *, with_editor: bool = True
            ) -> tuple[LoadedModel, Editor | None]:
    """(lm, editor) for a snapshot (None: the base model). The editor is the snapshot's
    (or the config's, at the base) with its memory restored."""
    cfg = project.config
    lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, allow_pickle=cfg.allow_pickle,
                    attach_memory=attach_memory_tensors)
    snapshots = project.snapshots()
    chain = snapshots.chain(snapshot_id) if snapshot_id else []
    if chain and chain[-1].base_model != lm.fingerprint:
        raise IntegrityError(f"snapshot {snapshot_id[:12]} was made on base model "
                             f"{chain[-1].base_model}, but {cfg.model} is {lm.fingerprint}",
                             hint="point `model:` at the model the snapshots were made on")
    editor = make_editor(cfg.editor, lm.model.config, {**cfg.hparams, "seed": cfg.seed}) \
        if with_editor else None
    for manifest in chain:
        if manifest.patch is None:
            continue
        patch = load_patch(snapshots.objects.get_tensors(manifest.patch))
        patch.apply(lm.model)
        if editor is not None and manifest.editor == editor.name:
            editor.accept(patch)
    return lm, editor


def fold_editor_state(project, snapshot_id: str | None, editor) -> None:
    """Give `editor` the memory it has at a snapshot: `accept` of every patch along the
    chain that an editor of its name made (a fallback editor's, made beside the main one)."""
    snapshots = project.snapshots()
    for manifest in snapshots.chain(snapshot_id) if snapshot_id else []:
        if manifest.patch is not None and manifest.editor == editor.name:
            editor.accept(load_patch(snapshots.objects.get_tensors(manifest.patch)))


class KeptModel:
    """The (lm, editor) of one snapshot, kept by a long-running process between runs:
    `kbsync watch` loads the model once, not once per cycle (an 8B model takes a minute).

    Valid only while HEAD is the snapshot it holds and the config it was loaded under is
    unchanged (kbsync.yaml edited during a watch: the next cycle loads afresh). A run that
    fails part-way leaves the model in an unknown state, so the caller drops it (`clear`).
    The base model's files are read once: replacing them needs a restart."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._pair: tuple | None = None

    @staticmethod
    def _key_of(project, snapshot_id: str | None) -> tuple:
        return snapshot_id, project.config.model_dump_json()

    def take(self, project, snapshot_id: str | None) -> tuple | None:
        """The kept (lm, editor) if it is this snapshot's under this config, else None;
        either way it is no longer kept (`keep` it again after a run that succeeded)."""
        pair, key = self._pair, self._key
        self.clear()
        return pair if pair is not None and key == self._key_of(project, snapshot_id) else None

    def keep(self, project, snapshot_id: str | None, lm, editor) -> None:
        self._key, self._pair = self._key_of(project, snapshot_id), (lm, editor)

    def clear(self) -> None:
        self._key = self._pair = None
