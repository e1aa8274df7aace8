"""The model and editor memory of a snapshot: the base model plus every patch along the
snapshot's chain, root first; the editor's state is the fold of `accept` over the same
patches. Rebuilt exactly, whatever process made them.

Consolidated checkpoints keep that cost from growing with history. The commit also stores
(`consolidate`), every so many patches along a chain (kbsync.yaml):
- `checkpoint` (every `checkpoint_every`): every matrix any patch of the chain changed,
  whole, as the model holds it after the snapshot, and the side memories; with each
  tensor's device type;
- `editor_checkpoint` (every `editor_checkpoint_every`): the editor's memory
  (`state_dict`) folded from the chain's patches, with the editor's name and
  hyperparameters. A separate cadence: AlphaEdit's memory is d_in² float64 per layer,
  five times the edited matrices on the default model, and only `apply` needs it.
`load_at` restores the nearest of each on the chain and replays only the patches after
it, so a rebuild reads fewer than `checkpoint_every` patches for the weights (and fewer
than `editor_checkpoint_every` for the editor) however long the chain.

Guarantees: a rebuild through checkpoints gives the same weights and editor memory as
replaying every patch, bit for bit (tests/test_rebuild.py). That holds because a checkpoint
is used only where replaying would compute the same thing: weights whose dtype, shape and
device type are the model's now (a float32 CPU replay and a bfloat16 GPU one round
differently), an editor memory made by an editor of the same name and hyperparameters.
Anything else falls back to replaying the whole chain, never to a near miss. The editor's
memory is folded from the stored patches, as `load_at` folds it, not taken from the live
editor, which may hold what the device or a failed attempt left in it.

The editing layer does not import the store (layers point down: tests/test_layers.py); the
project passed in brings its snapshots (`project.snapshots()`, a SnapshotStore)."""

from __future__ import annotations

import json
from collections.abc import Callable

from kbsync.editing.contract import Editor
from kbsync.editing.patch import load_patch, restore_layers
from kbsync.editing.registry import make_editor
from kbsync.editing.side.memory import attach_memory_tensors, memory_tensors
from kbsync.errors import IntegrityError
from kbsync.lm import arch
from kbsync.lm.load import LoadedModel, load_model

CHECKPOINT_FORMAT = "kbsync.checkpoint/1"
EDITOR_CHECKPOINT_FORMAT = "kbsync.editor-checkpoint/1"

def load_at(project, snapshot_id: str | None, *, with_editor: bool = True,
            checkpoints: bool = True) -> tuple[LoadedModel, Editor | None]:
    """(lm, editor) for a snapshot (None: the base model). The editor is the snapshot's
    (or the config's, at the base) with its memory restored. `checkpoints=False` replays
    the whole chain (what a checkpoint must equal)."""
    cfg = project.config
    lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, allow_pickle=cfg.allow_pickle,
                    attach_memory=attach_memory_tensors)
    editor = new_editor(project, lm) if with_editor else None
    if snapshot_id is None:
        return lm, editor
    snapshots = project.snapshots()
    head = snapshots.read(snapshot_id)
    if head.base_model != lm.fingerprint:
        raise IntegrityError(f"snapshot {snapshot_id[:12]} was made on base model "
                             f"{head.base_model}, but {cfg.model} is {lm.fingerprint}",
                             hint="point `model:` at the model the snapshots were made on")
    replay(snapshots, snapshot_id, lm.model, editor, checkpoints=checkpoints)
    return lm, editor


def new_editor(project, lm):
    """The config's editor with an empty memory."""
    cfg = project.config
    return make_editor(cfg.editor, lm.model.config, {**cfg.hparams, "seed": cfg.seed})


def replay(snapshots, snapshot_id: str, model, editor=None, *, checkpoints: bool = True) -> None:
    """Bring `model` (the base model) and `editor` (empty, or None) to `snapshot_id`:
    from the nearest usable checkpoints (module doc), then the patches after them."""
    known: dict = {}
    weights = _resume(snapshots, snapshot_id, "checkpoint", known,
                      lambda sha: restore_weights(snapshots.objects, sha, model), checkpoints)
    folds = [] if editor is None else _resume(
        snapshots, snapshot_id, "editor_checkpoint", known,
        lambda sha: restore_editor(snapshots.objects, sha, editor), checkpoints)
    longest = weights if len(weights) >= len(folds) else folds
    for i, manifest in enumerate(longest):
        left = len(longest) - i               # both tails are suffixes of the chain
        apply, fold = left <= len(weights), left <= len(folds) and manifest.editor == editor.name
        if manifest.patch is None or not (apply or fold):
            continue
        patch = load_patch(snapshots.objects.get_tensors(manifest.patch))
        if apply:
            patch.apply(model)
        if fold:
            editor.accept(patch)


def _resume(snapshots, snapshot_id: str, field: str, known: dict,
            restore: Callable[[str], bool], use: bool) -> list:
    """Restore from the nearest `field` checkpoint on the chain (snapshot included) if
    `restore` accepts it; the manifests whose patches are left to replay, oldest first
    (the whole chain when none is used). One refused checkpoint stops the search: the
    older ones were made under the same conditions, and reading each would cost more
    than the replay saves."""
    tail = []
    for _, manifest in snapshots.ancestors(snapshot_id, known):
        sha = getattr(manifest, field)
        if use and sha is not None:
            if restore(sha):
                return tail[::-1]
            use = False
        tail.append(manifest)
    return tail[::-1]


# -- checkpoints ------------------------------------------------------------------------
def restore_weights(objects, sha: str, model) -> bool:
    """Load a weights checkpoint into `model` if it fits exactly (dtype, shape, device
    type of every tensor); False, with the model untouched, if not."""
    tensors, meta = objects.get_tensors_and_metadata(sha)
    if meta.get("format") != CHECKPOINT_FORMAT:
        return False
    devices = json.loads(meta.get("devices", "{}"))
    weights = {int(name.split(".")[1]): t for name, t in tensors.items() if name.startswith("weight.")}
    for layer, t in weights.items():
        w = arch.weight_of(model, layer)
        if (w.dtype, w.shape, w.device.type) != (t.dtype, t.shape, devices.get(f"weight.{layer}")):
            return False
    memory = {name[len("memory."):]: t for name, t in tensors.items() if name.startswith("memory.")}
    if memory and any(devices.get(f"memory.{n}") != _device_type(model) for n in memory):
        return False
    restore_layers(model, weights)
    attach_memory_tensors(model, memory)
    return True


def restore_editor(objects, sha: str, editor) -> bool:
    """Load an editor checkpoint if the same editor under the same hyperparameters made it."""
    tensors, meta = objects.get_tensors_and_metadata(sha)
    if (meta.get("format"), meta.get("editor"), meta.get("hparams")) != \
            (EDITOR_CHECKPOINT_FORMAT, editor.name, _hparams_key(editor)):
        return False
    editor.load_state_dict(tensors)
    return True


def consolidate(project, lm, parent_id: str | None, patch_id: str | None) -> dict[str, str]:
    """The manifest fields `checkpoint` and `editor_checkpoint` of a snapshot about to be
    committed on `parent_id` with the patch `patch_id` (stored), `lm` holding the model
    at that snapshot: each one only once this patch makes `checkpoint_every` (weights) or
    `editor_checkpoint_every` (editor) patches since the nearest one on the chain."""
    cfg, snapshots, known = project.config, project.snapshots(), {}
    if patch_id is None:
        return {}
    fields = {}
    if _patches_since(snapshots, parent_id, "checkpoint", known, cfg.checkpoint_every) + 1 \
            >= cfg.checkpoint_every:
        layers = _chain_layers(snapshots, parent_id, known) | _layers(snapshots, patch_id)
        fields["checkpoint"] = _put_weights(snapshots.objects, lm.model, layers)
    if _patches_since(snapshots, parent_id, "editor_checkpoint", known,
                      cfg.editor_checkpoint_every) + 1 >= cfg.editor_checkpoint_every:
        fields["editor_checkpoint"] = _put_editor(snapshots, new_editor(project, lm),
                                                  parent_id, patch_id, known)
    return fields


def _put_editor(snapshots, editor, parent_id, patch_id, known) -> str:
    """The editor's memory at the new snapshot, folded from the stored patches as `replay`
    folds it (not taken from the live editor: module doc)."""
    tail = [] if parent_id is None else _resume(
        snapshots, parent_id, "editor_checkpoint", known,
        lambda sha: restore_editor(snapshots.objects, sha, editor), True)
    fold_patches(snapshots.objects, editor, own_patches(tail, editor) + [patch_id])
    return snapshots.objects.put_tensors(editor.state_dict(), {
        "format": EDITOR_CHECKPOINT_FORMAT, "editor": editor.name,
        "hparams": _hparams_key(editor)})


def _patches_since(snapshots, snapshot_id: str | None, field: str, known: dict,
                   limit: int) -> int:
    """Patches on the chain after its nearest `field` checkpoint (counting stops at limit)."""
    count = 0
    if snapshot_id is None:
        return 0
    for _, manifest in snapshots.ancestors(snapshot_id, known):
        if getattr(manifest, field) is not None or count >= limit:
            break
        count += manifest.patch is not None
    return count


def _chain_layers(snapshots, snapshot_id: str | None, known: dict) -> set[int]:
    """Layers changed by the chain's patches: those of its nearest weights checkpoint and
    of the patches after it."""
    layers: set[int] = set()
    if snapshot_id is None:
        return layers
    for _, manifest in snapshots.ancestors(snapshot_id, known):
        if manifest.checkpoint is not None:
            tensors = snapshots.objects.get_tensors(manifest.checkpoint)
            return layers | {int(n.split(".")[1]) for n in tensors if n.startswith("weight.")}
        if manifest.patch is not None:
            layers |= _layers(snapshots, manifest.patch)
    return layers


def _layers(snapshots, patch_id: str) -> set[int]:
    return set(load_patch(snapshots.objects.get_tensors(patch_id)).layers)


def _put_weights(objects, model, layers: set[int]) -> str:
    tensors = {f"weight.{l}": arch.weight_of(model, l).detach() for l in sorted(layers)}
    tensors.update({f"memory.{k}": t for k, t in memory_tensors(model).items()})
    devices = {n: (arch.weight_of(model, int(n.split(".")[1])).device.type
                   if n.startswith("weight.") else _device_type(model)) for n in tensors}
    return objects.put_tensors(tensors, {"format": CHECKPOINT_FORMAT,
                                         "devices": json.dumps(devices, sort_keys=True)})


def _device_type(model) -> str:
    return next(model.parameters()).device.type


def _hparams_key(editor) -> str:
    return json.dumps(editor.hp.to_dict(), sort_keys=True, default=str)


def fold_editor_state(project, snapshot_id: str | None, editor) -> None:
    """Give `editor` the memory it has at a snapshot: `accept` of every patch along the
    chain that an editor of its name made (a fallback editor's, made beside the main one)."""
    snapshots = project.snapshots()
    chain = snapshots.chain(snapshot_id) if snapshot_id else []
    fold_patches(snapshots.objects, editor, own_patches(chain, editor))


def own_patches(manifests, editor) -> list[str]:
    """The patches of `manifests` (oldest first) that an editor of `editor`'s name made."""
    return [m.patch for m in manifests if m.patch is not None and m.editor == editor.name]


def fold_patches(objects, editor, shas: list[str]) -> None:
    """`accept` each stored patch, in order: how editor memory is rebuilt everywhere but
    in `replay`, which folds each patch it also applies."""
    for sha in shas:
        editor.accept(load_patch(objects.get_tensors(sha)))


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
