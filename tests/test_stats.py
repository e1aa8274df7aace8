"""The covariance statistics' sample: a fixed shuffle of both shipped sources that never
reads the perplexity drift reference, so a sample of n tokens is a prefix of one of 2n;
`stats_corpus` picks another text, and names it in the cache."""

import pytest

from kbsync.editing import stats
from kbsync.errors import EditorError
from kbsync.evaluate.drift import BENCH_PASSAGES, reference_text
from kbsync.testing import tiny_tokenizer


def test_sample_mixes_both_sources_in_a_fixed_order_without_the_drift_text():
    passages = stats.sample_passages()
    assert passages == stats.sample_passages()
    biographies = set(stats.CORPUS.read_text().splitlines())
    wikitext = set(stats.WIKITEXT.read_text().splitlines())
    head = passages[:200]                         # shuffled: both sources from the start
    assert any(p in biographies for p in head) and any(p in wikitext for p in head)
    assert not set(reference_text(BENCH_PASSAGES)) & set(passages)
    assert set(passages) == (biographies | wikitext) - set(reference_text(BENCH_PASSAGES))


def test_doubling_the_sample_keeps_the_smaller_one():
    tok, passages = tiny_tokenizer(), stats.sample_passages()
    small = stats.corpus_chunks(tok, passages, 3000, 100)
    large = stats.corpus_chunks(tok, passages, 6000, 100)
    assert sum(map(len, small)) == 3000 and sum(map(len, large)) == 6000
    assert large[:len(small)] == small


def test_other_corpora_have_their_own_cache_entry(tmp_path):
    own = tmp_path / "domain.txt"
    own.write_text("first passage\n\nsecond passage\n", encoding="utf-8")
    assert stats.sample_passages(str(own)) == ["first passage", "second passage"]
    digests = {stats.sample_digest(stats.sample_passages(c))
               for c in ("mixed", "biographies", str(own))}
    assert len(digests) == 3
    with pytest.raises(EditorError, match="stats_corpus"):
        stats.sample_passages(str(tmp_path / "missing.txt"))
