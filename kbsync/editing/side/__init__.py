"""Side-memory editors: the base model's weights stay as they are; a small routed memory at
one layer's MLP out-projection answers the edited facts (GRACE, WISE, CASE).

    memory.py   the routed memory a forward hook installs (per kind: its tensors, its route)
    router.py   nearest-key-within-radius routing (GRACE's codebook, CASE's sketched keys)
    patch.py    MemoryPatch: a batch's change to the memory, stored like a weight patch
    train.py    the shared front end: rows, keys at the key token, suffix-only training steps
    base.py     SideEditor: edit() -> MemoryPatch; each editor writes only `update`
    grace.py, wise.py, case.py
"""
