"""Editors: turn edit requests into weight patches (or side-memory patches).

Data flow, one batch:  requests -> front end (target vectors and keys: targets.py, keys.py;
or gradient features: gradients.py) -> solve (one file per editor) -> patch (patch.py)
-> accept (the editor folds the patch's state update into its memory).

Adding an editor:
1. its own module: a class that is a `contract.Editor` (`name`, `hp`, `last_stats`,
   `clock`, `weight_layers`, `covariances(lm)`, `edit(lm, specs) -> Patch`,
   `accept(patch)`, `state_dict()` / `load_state_dict()`;
   tests/test_editor_contract.py checks it); a locate-then-edit editor subclasses
   `base.LocateThenEdit` and writes only `solve` (returning a `base.Solution`) and, if it
   remembers past edits, its memory as a `state.EditorState` in the same module
   (`memory_class = ...`: fields, `fold(patch)`, `entries`/`from_entries` under stable
   names; bump its VERSION when they change); a side-memory editor subclasses
   `side.base.SideEditor` and writes `update` and its `SideMemory`;
2. `hparams/<name>.yaml`: defaults, then per family and per model; a MEMIT-family
   editor says `base: front_end` and lists only what differs from hparams/front_end.yaml;
3. one entry in `registry.EDITORS`, the one registry (name -> `Method(target, summary,
   memory=)`: its class or factory, its `kbsync editors` line and, for a side-memory
   editor, its SideMemory class), which keeps `kbsync plan` from importing torch;
   regularisers are `registry.REGULARIZERS` and act in every weight editor;
4. its tests: an edit lands on the tiny models of every family, an unrelated prompt
   barely moves, state save/load and a rebuilt chain give identical next edits (its
   memory's names in tests/test_editor_state.py), and its
   solve against the closed form on random float64 matrices (tests/test_editors_scale.py
   is the latest example).
"""
