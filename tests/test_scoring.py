"""Streaming pool IDF (SPEC 3) against reference.document_frequency / reference.idf."""
import pytest
import torch

from trim_fast import reference
from trim_fast.batching import TokenChunk
from trim_fast.scoring.idf import DocumentFrequency


def pool(seed, b=60, n=25, vocab=90):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, n, (b,), generator=g)
    ids = [torch.randint(0, vocab, (int(m),), generator=g) for m in lengths]
    counted = [torch.rand(int(m), generator=g) < 0.7 for m in lengths]
    counted[4][:] = False  # an example with no counted token still counts in N
    return ids, counted


def chunk(ids, counted):
    offsets = torch.tensor([0] + [int(x.numel()) for x in ids]).cumsum(0)
    return TokenChunk(torch.cat(ids), torch.cat(counted), offsets, torch.zeros(len(ids), dtype=torch.long))


@pytest.mark.parametrize("seed", [0, 1])
def test_streaming_idf_matches_reference(seed):
    ids, counted = pool(seed)
    vocab = 100  # larger than any id seen
    want = reference.idf(torch.arange(vocab), *reference.document_frequency(
        [x[c] for x, c in zip(ids, counted)]))
    whole = DocumentFrequency(vocab)
    whole.add_chunk(chunk(ids, counted))
    streamed = DocumentFrequency(vocab)
    for s in range(0, len(ids), 16):  # chunk by chunk
        streamed.add_chunk(chunk(ids[s:s + 16], counted[s:s + 16]))
    shards = DocumentFrequency(vocab), DocumentFrequency(vocab)  # two ranks
    shards[0].add_chunk(chunk(ids[:30], counted[:30]))
    shards[1].add_chunk(chunk(ids[30:], counted[30:]))
    shards[0].merge(shards[1])
    for df in (whole, streamed, shards[0]):
        assert df.num_examples == len(ids)
        got = df.idf()
        assert got.dtype == torch.float32 and got.shape == (vocab,)
        assert torch.equal(got, want)


def test_a_token_repeated_in_one_example_counts_once():
    df = DocumentFrequency(10)
    df.add_chunk(chunk([torch.tensor([3, 3, 3, 4]), torch.tensor([3])],
                       [torch.ones(4, dtype=torch.bool), torch.ones(1, dtype=torch.bool)]))
    assert df.df[3] == 2 and df.df[4] == 1 and df.num_examples == 2


def test_ids_outside_the_vocabulary_are_refused():
    df = DocumentFrequency(50)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        df.add_chunk(chunk([torch.tensor([5, 99])], [torch.ones(2, dtype=torch.bool)]))
    with pytest.raises(ValueError, match="vocabularies differ"):
        df.merge(DocumentFrequency(51))
