"""Streaming pool IDF (SPEC 3) against reference.document_frequency / reference.idf."""
import pytest
import torch

from trim_fast import reference
from trim_fast.scoring import DocumentFrequency


def pool(seed, b=60, n=25, vocab=90):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, n), generator=g)
    counted = torch.rand(b, n, generator=g) < 0.7
    counted[4] = False  # an example with no counted token still counts in N
    return ids, counted


@pytest.mark.parametrize("seed", [0, 1])
def test_streaming_idf_matches_reference(seed):
    ids, counted = pool(seed)
    vocab = 100  # larger than any id seen
    examples = [ids[i][counted[i]] for i in range(ids.shape[0])]
    want = reference.idf(torch.arange(vocab), *reference.document_frequency(examples))

    per_example = DocumentFrequency()
    for ex in examples:
        per_example.update(ex.tolist())
    batched = DocumentFrequency()
    for start in range(0, ids.shape[0], 16):  # streaming batches of the pool
        batched.update_batch(ids[start:start + 16], counted[start:start + 16])
    shards = DocumentFrequency(), DocumentFrequency()
    shards[0].update_batch(ids[:30], counted[:30])
    shards[1].update_batch(ids[30:], counted[30:])
    shards[0].merge(shards[1])
    for df in (per_example, batched, shards[0]):
        assert df.num_examples == ids.shape[0]
        got = df.idf(vocab)
        assert got.dtype == torch.float32 and got.shape == (vocab,)
        assert torch.equal(got, want)


def test_save_load(tmp_path):
    ids, counted = pool(2)
    df = DocumentFrequency()
    df.update_batch(ids, counted)
    path = tmp_path / "df.safetensors"
    df.save(path, meta={"tokenizer_hash": "t1"})
    back = DocumentFrequency.load(path, expect={"tokenizer_hash": "t1"})
    assert back.num_examples == df.num_examples and torch.equal(back.idf(90), df.idf(90))
    with pytest.raises(ValueError, match="tokenizer 't1'"):
        DocumentFrequency.load(path, expect={"tokenizer_hash": "t2"})
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match="not a readable"):
        DocumentFrequency.load(path)


def test_bad_input():
    df = DocumentFrequency()
    with pytest.raises(ValueError, match="negative"):
        df.update([3, -1])
    with pytest.raises(TypeError, match="bool"):
        df.update_batch(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3))
    df.update([5, 99])
    with pytest.raises(ValueError, match="vocab_size is 50"):
        df.idf(50)
