"""The covariance statistics' sample: a fixed shuffle of both shipped sources that never
reads the perplexity drift reference, so a sample of n tokens is a prefix of one of 2n."""

from kbsync.editing import stats
from kbsync.editing.stats import sample_passages as mixed_sample   # before conftest patches it
from kbsync.evaluate.drift import BENCH_PASSAGES, reference_text
from kbsync.testing import tiny_tokenizer


def test_sample_mixes_both_sources_in_a_fixed_order_without_the_drift_text():
    passages = mixed_sample()
    assert passages == mixed_sample()
    biographies = set(stats.CORPUS.read_text().splitlines())
    wikitext = set(stats.WIKITEXT.read_text().splitlines())
    head = passages[:200]                         # shuffled: both sources from the start
    assert any(p in biographies for p in head) and any(p in wikitext for p in head)
    assert not set(reference_text(BENCH_PASSAGES)) & set(passages)
    assert set(passages) == (biographies | wikitext) - set(reference_text(BENCH_PASSAGES))


def test_doubling_the_sample_keeps_the_smaller_one(monkeypatch):
    monkeypatch.setattr(stats, "sample_passages", mixed_sample)
    tok = tiny_tokenizer()
    small = stats.corpus_chunks(tok, 3000, 100)
    large = stats.corpus_chunks(tok, 6000, 100)
    assert sum(map(len, small)) == 3000 and sum(map(len, large)) == 6000
    assert large[:len(small)] == small
