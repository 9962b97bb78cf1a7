"""The one forward loop (trim_fast.capture.forward): its exact levers (shared prefix computed
once, tails cut at the last counted token, re-batching) equal the plain full forward, prefix
detection and tail cutting on their edge cases, the early exit, and the fallbacks."""
import pytest
import torch

from trim_fast.batching import TokenChunk
from trim_fast.capture.forward import (ForwardCache, ForwardLoop, needed_lengths,
                                       shared_prefix_length)
from trim_fast.models.tiny import tiny_model

PREFIX = torch.arange(100, 124)  # 24 tokens, like SmolLM2's system prompt + user header


def _chunk(rows):
    """``rows``: (ids, counted) pairs."""
    ids = torch.cat([torch.as_tensor(r[0], dtype=torch.long) for r in rows])
    counted = torch.cat([torch.as_tensor(r[1], dtype=torch.bool) for r in rows])
    offsets = torch.tensor([0] + [len(r[0]) for r in rows]).cumsum(0)
    return TokenChunk(ids, counted, offsets, torch.zeros(len(rows), dtype=torch.long))


def _pool(seed=0, lengths=(5, 40, 13, 30, 2, 0, 17), prefix=PREFIX):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i, n in enumerate(lengths):
        ids = torch.cat([prefix, torch.randint(3, 5000, (n,), generator=g)])
        counted = torch.zeros(ids.numel(), dtype=torch.bool)
        if i % 3 == 0:
            counted[len(prefix):max(len(prefix), ids.numel() - 3)] = True  # tail after the last
        elif i % 3 == 1:
            counted[20:] = True  # left context (inside the prefix) counted
        # i % 3 == 2: no counted token at all
        rows.append((ids, counted))
    return _chunk(rows)


def _per_example(loop, chunk, layer=-1):
    """Each example's states at its real (unpadded) positions, and the positions' ids."""
    out = {}
    for hb in loop.hidden_batches(chunk):
        for row, i in enumerate(hb.index):
            keep = hb.mask[row]
            out[i] = (hb.states[layer][row][keep], hb.ids[row][keep], hb.counted[row][keep])
    return out


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def test_prefix_length_from_the_ids():
    a, b = [1, 2, 3, 4, 5], [1, 2, 3, 9]
    f = [False] * 5
    assert shared_prefix_length(_chunk([(a, f), (b, f[:4])])) == 3
    assert shared_prefix_length(_chunk([(a, f), ([7, 2, 3], f[:3])])) == 0  # none shared
    assert shared_prefix_length(_chunk([(a, f)])) == 5  # a pool of one: the whole example
    assert shared_prefix_length(_chunk([(a, f), (a[:2], f[:2])])) == 2  # = a whole example
    assert shared_prefix_length(_chunk([(a, f), (a, f)])) == 5
    assert shared_prefix_length(_chunk([(a, f), ([], [])])) == 0


def test_padded_gather_equals_pad_batch_of_the_cut_rows():
    from trim_fast.batching import pad_batch

    chunk = _pool(3)
    need = torch.tensor(needed_lengths(chunk))
    for batch in ([6, 0, 3], [1], [5, 2, 4, 1]):
        for lengths in (None, need):
            rows = [(ids[:n], c[:n]) for ids, c, n in
                    ((*chunk.example(i), len(chunk.example(i)[0]) if lengths is None
                      else int(lengths[i])) for i in batch)]
            want = pad_batch(rows, 9, "cpu")
            got = chunk.padded(batch, 9, "cpu", lengths=lengths)
            for g, w in zip(got, want):
                assert g.dtype == w.dtype and torch.equal(g, w)


def test_needed_lengths_stop_at_the_last_counted_token():
    rows = [([1, 2, 3, 4], [False, True, False, False]),  # tail of 2
            ([1, 2, 3], [False, False, False]),  # none counted: whole example
            ([1, 2], [True, True]),
            ([5], [True])]
    assert needed_lengths(_chunk(rows)) == [2, 3, 2, 1]


@pytest.mark.parametrize("layers", [(None,), (2,), (1, None)])
def test_levers_equal_the_plain_forward(llama, layers):
    chunk = _pool()
    plain = ForwardLoop(llama, pad_id=2, max_tokens=128, layers=layers, shared_prefix=False,
                        cut_tails=False)
    fast = ForwardLoop(llama, pad_id=2, max_tokens=128, layers=layers)
    list(plain.hidden_batches(chunk)), list(fast.hidden_batches(chunk))
    assert fast.prefix_fallback is None and fast.stats.prefix_tokens == 24 * len(chunk)
    assert fast.stats.forwarded < plain.stats.forwarded
    for key in plain.layers:
        want, got = _per_example(plain, chunk, key), _per_example(fast, chunk, key)
        for i in range(len(chunk)):
            h0, ids0, c0 = want[i]
            h1, ids1, c1 = got[i]
            n = ids1.numel()
            assert n <= ids0.numel() and torch.equal(ids1, ids0[:n])
            assert torch.equal(c0[:n], c1) and not c0[n:].any()  # nothing counted is cut
            torch.testing.assert_close(h1, h0[:n], atol=1e-5, rtol=0)


def test_no_shared_prefix_and_whole_example_prefix(llama):
    g = torch.Generator().manual_seed(1)
    rows = [(torch.randint(3, 5000, (n,), generator=g), torch.ones(n, dtype=torch.bool))
            for n in (7, 12, 3)]
    for chunk in (_chunk(rows), _chunk(rows[:1]), _chunk([rows[0], (rows[0][0][:4], rows[0][1][:4])])):
        plain = _per_example(ForwardLoop(llama, pad_id=2, max_tokens=64, shared_prefix=False,
                                         cut_tails=False), chunk)
        fast = _per_example(ForwardLoop(llama, pad_id=2, max_tokens=64), chunk)
        for i in plain:
            torch.testing.assert_close(fast[i][0], plain[i][0], atol=1e-5, rtol=0)


def test_prefix_is_forwarded_once_per_loop(llama):
    loop = ForwardLoop(llama, pad_id=2, max_tokens=128)
    calls = []
    handle = llama.register_forward_pre_hook(lambda m, a, k: calls.append(k["input_ids"].shape),
                                             with_kwargs=True)
    try:
        list(loop.hidden_batches(_pool(0)))
        list(loop.hidden_batches(_pool(1)))  # same prefix, other suffixes
    finally:
        handle.remove()
    assert sum(1 for s in calls if tuple(s) == (1, 24)) == 1


def test_fallbacks_say_why():
    assert "sliding" in ForwardLoop(tiny_model("mistral"), pad_id=2, max_tokens=64).prefix_fallback
    bert = ForwardLoop(tiny_model("bert"), pad_id=2, max_tokens=64)
    assert bert.prefix_fallback == "bidirectional attention" and not bert.cut_tails


def test_forward_cache_keeps_layers_apart(llama):
    cache = ForwardCache()
    chunk = _pool()
    a = _per_example(ForwardLoop(llama, pad_id=2, max_tokens=128, forward_cache=cache), chunk)
    b = _per_example(ForwardLoop(llama, pad_id=2, max_tokens=128, layers=(1,),
                                 forward_cache=cache), chunk, 1)
    assert not torch.equal(a[1][0], b[1][0])
    again = _per_example(ForwardLoop(llama, pad_id=2, max_tokens=128, forward_cache=cache), chunk)
    assert all(torch.equal(a[i][0], again[i][0]) for i in a)


def test_early_exit_states_equal_the_capture_forwards(llama):
    """Fingerprints (saliency capture) and pool scoring read the same block's output."""
    from trim_fast.capture import capture_eager, capture_saliency

    chunk = _pool(lengths=(6, 9))
    loop = ForwardLoop(llama, pad_id=2, max_tokens=128, layers=(2,), shared_prefix=False,
                       cut_tails=False)
    (hb,) = list(loop.hidden_batches(chunk))
    for capture in (capture_saliency, capture_eager):
        cap = capture(llama, hb.ids, hb.mask, layers=1, hidden_layer=2)
        torch.testing.assert_close(cap.hidden[hb.mask], hb.states[2][hb.mask], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="hidden_layer must be in 1..3"):
        ForwardLoop(llama, pad_id=2, max_tokens=64, layers=(0,))


def _select(model_dir, pool, targets, **cfg):
    from trim_fast.api import Selector
    from trim_fast.config import SelectionConfig

    sel = Selector(model_dir, config=SelectionConfig(**cfg))
    return sel.select(pool, targets)


def _assert_same_selection(a, b):
    assert a.indices == b.indices
    s0, s1 = a.scores.score, b.scores.score
    assert torch.equal(torch.isfinite(s0), torch.isfinite(s1))
    fin = torch.isfinite(s0)
    assert float((s0[fin] - s1[fin]).abs().max()) <= 1e-5


@pytest.mark.parametrize("method", ["matched", "paper"])
def test_selection_with_levers_equals_the_plain_path_tiny(tiny_model_dir, demo_data, method):
    targets = demo_data["targets"]["arithmetic"]
    fast = _select(tiny_model_dir, demo_data["pool"], targets, method=method)
    plain = _select(tiny_model_dir, demo_data["pool"], targets, method=method,
                    shared_prefix=False, cut_tails=False)
    _assert_same_selection(fast, plain)


def test_scoring_refuses_banks_of_another_layer(tiny_model_dir, demo_data):
    from trim_fast.api import Selector
    from trim_fast.config import SelectionConfig

    targets = demo_data["targets"]["arithmetic"]
    sel = Selector(tiny_model_dir, config=SelectionConfig(hidden_layer=2))
    banks = sel.fingerprint(targets, pool=demo_data["pool"])
    assert next(iter(banks.values())).meta["settings"]["hidden_layer"] == 2
    with pytest.raises(ValueError, match="hidden_layer"):
        Selector(tiny_model_dir).score(demo_data["pool"], banks)


@pytest.mark.slow
def test_selection_with_levers_equals_the_plain_path_smollm2(tmp_path):
    from trim_fast.demo import generate as demo, hard

    for gen, kw in ((demo.generate, dict(pool_size=200, targets_per_family=4)),
                    (hard.generate, dict(per_family=20, targets_per_family=4))):
        data = gen(str(tmp_path / gen.__module__), seed=0, **kw)
        targets = dict(list(data["targets"].items())[:2])
        fast = _select(None, data["pool"], targets)
        plain = _select(None, data["pool"], targets, shared_prefix=False, cut_tails=False)
        _assert_same_selection(fast, plain)


def test_tight_batches_pad_less_and_keep_every_example():
    from trim_fast.batching import token_budget_batches

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 120, (300,), generator=g).tolist()

    def slots(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    loose = token_budget_batches(lengths, 8192)
    tight = token_budget_batches(lengths, 8192, tight_from=1024)
    assert sorted(i for b in tight for i in b) == list(range(300))
    assert all(len(b) * max(lengths[i] for i in b) <= 8192 for b in tight)
    assert slots(tight) < slots(loose)
    for b in tight:  # a batch ends early only once it holds tight_from tokens
        assert min(lengths[i] for i in b) >= 0.9 * lengths[b[0]] or \
            (len(b) - 1) * lengths[b[0]] < 1024
