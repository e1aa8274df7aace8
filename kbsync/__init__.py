"""kbsync: keep a causal language model in agreement with a versioned knowledge base."""

__version__ = "0.1.0"
