"""GRACE (Hartvigsen et al., NeurIPS 2023, arXiv 2211.11031): a codebook at one layer's MLP
out-projection. An entry is (key, value, radius): a token whose input lies within an
entry's radius of its key gets the entry's value as the layer's output; every other token
is untouched. Keys are the input at the prompt's last token.

Codebook rules for a new edit (the reference's, in order), against the nearest key:
  farther than the new radius + the nearest's radius -> a new entry;
  same answer -> the nearest entry's radius grows to cover it ("coverage");
  another answer -> a new entry, and both radii become half their distance (a split).
A value starts from the layer's current output there and is trained (Adam) on the edit's
target NLL, the model frozen. Radii are relative to the key's norm (`eps`), not absolute
as in the reference, so one default holds across layers and models."""

from __future__ import annotations

import zlib

import torch

from kbsync.editing.side.base import SideEditor
from kbsync.editing.side.memory import SideMemory
from kbsync.editing.side.router import nearest_within
from kbsync.editing.side.train import build_rows, fit, memory_off


def label_of(target: str) -> int:
    return zlib.crc32(target.strip().lower().encode())


class GraceMemory(SideMemory):
    """keys (N, d_in), values (N, d_out), radius (N,), label (N,) int64."""
    kind = "grace"

    def route(self, x, out):
        t = self.tensors
        flat, flat_out = x.reshape(-1, x.shape[-1]), out.reshape(-1, out.shape[-1])
        hit, entry, _ = nearest_within(flat, t["keys"], t["radius"])
        if not bool(hit.any()):
            return out
        replaced = flat_out.clone()
        replaced[hit] = t["values"][entry[hit]].to(replaced)
        return replaced.view_as(out)


class GRACE(SideEditor):
    name = kind = "grace"
    # its edit is about 0.1 s a fact on the default model and its entries do not share a
    # fit, while a batch's gates cost about 13 s whatever its size (benchmarks/RESULTS.md,
    # "Past the wall in batches of the fallback's size")
    default_batch_size = 50

    def update(self, lm, specs, memory):
        with memory_off(lm.model):
            rows = build_rows(lm, specs, ["{}"], self.layer, key="prompt")
        keys, warm = rows.key_inputs(), rows.out[: rows.n_edit_rows, 0]
        entry, plan = self._allocate(memory, keys, [label_of(s.target) for s in specs], warm)

        values = plan["values"].clone().requires_grad_(True)
        idx = torch.as_tensor(entry, device=values.device)
        at = torch.arange(len(specs), device=values.device)

        def side(x, out):      # the entry's value replaces the output at the key token
            return out.index_put((at, torch.zeros_like(at)), values[idx])
        self.last_stats = fit(rows, [values], side, steps=self.hp.steps, lr=self.hp.lr,
                              settle=self.x.get("settle", 1))
        return self._as_update(memory, plan, values.detach())

    def _allocate(self, memory, keys, labels, warm):
        """Codebook decisions, one edit after the other (later edits of the batch see the
        entries earlier ones made). Returns each edit's entry (index into plan["values"])
        and the plan: the old entries this batch changes and the new ones."""
        t = memory.tensors
        n_old = len(t["keys"]) if t else 0
        all_keys = t["keys"].clone() if t else keys.new_zeros(0, keys.shape[1])
        radius = t["radius"].clone() if t else keys.new_zeros(0)
        label = t["label"].clone() if t else torch.zeros(0, dtype=torch.long, device=keys.device)
        values = t["values"].clone() if t else warm.new_zeros(0, warm.shape[1])
        entry = []
        for i, key in enumerate(keys):
            eps = self.x["eps"] * float(key.norm())
            hit, near, dist = nearest_within(key[None], all_keys, radius + eps)
            j, d = int(near[0]), float(dist[0])
            if bool(hit[0]) and int(label[j]) == labels[i]:
                radius[j] = max(float(radius[j]), d)           # coverage: grow to reach it
                entry.append(j)
                continue
            new_radius = eps
            if bool(hit[0]):                                   # another answer: split
                radius[j] = min(float(radius[j]), d / 2 - 1e-5)
                new_radius = min(eps, d / 2)
            all_keys = torch.cat([all_keys, key[None]])
            radius = torch.cat([radius, radius.new_tensor([new_radius])])
            label = torch.cat([label, label.new_tensor([labels[i]])])
            values = torch.cat([values, warm[i:i + 1]])
            entry.append(len(all_keys) - 1)
        return entry, {"n_old": n_old, "keys": all_keys, "radius": radius, "label": label,
                       "values": values, "used": sorted(set(entry))}

    @staticmethod
    def _as_update(memory, plan, values) -> dict[str, torch.Tensor]:
        n_old = plan["n_old"]
        update = {"append.keys": plan["keys"][n_old:], "append.values": values[n_old:],
                  "append.radius": plan["radius"][n_old:], "append.label": plan["label"][n_old:]}
        if n_old:
            old = memory.tensors
            changed = torch.nonzero(plan["radius"][:n_old] != old["radius"]).flatten()
            if len(changed):
                update["set.radius"], update["index.radius"] = plan["radius"][changed], changed
            retrained = torch.tensor([j for j in plan["used"] if j < n_old], dtype=torch.long)
            if len(retrained):
                update["set.values"], update["index.values"] = values[retrained], retrained
        return update
