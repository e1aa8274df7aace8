"""kbsync: keep a causal language model in agreement with a versioned knowledge base."""

__version__ = "0.1.0"


def load_model(path, *, device: str = "auto", dtype: str = "auto"):
    """Load a model directory, e.g. one `kbsync export` wrote, as its snapshot answers:
    the weights plus any side memory (GRACE, WISE, CASE) routed in. Returns an object with
    `.model` and `.tokenizer`."""
    from kbsync.editing.side.memory import attach_memory_tensors
    from kbsync.lm.load import load_model as load

    return load(path, device=device, dtype=dtype, attach_memory=attach_memory_tensors)
