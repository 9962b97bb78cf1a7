"""trim_fast.models: objects -> base model (forward_model), weights digest, loading policy.

Tiny models only, except one SmolLM2 load (the GGUF progress bars). No test reaches the network:
the hub tests point HF_ENDPOINT at a local socket server or block sockets outright.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from trim_fast import hub
from trim_fast.models import loading
from trim_fast.models.digest import weights_digest
from trim_fast.models.loading import load_causal_lm, load_model, load_tokenizer, model_id
from trim_fast.models.prepare import forward_model
from lora import make_adapter

IDS = torch.tensor([[1, 17, 230, 4051, 99, 12, 7, 2], [1, 5, 6, 7, 8, 9, 10, 11]])


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    return make_adapter(tiny_model_dir, str(tmp_path_factory.mktemp("lora_a")), seed=1)


@pytest.fixture(scope="module")
def other_adapter_dir(tiny_model_dir, tmp_path_factory):
    return make_adapter(tiny_model_dir, str(tmp_path_factory.mktemp("lora_b")), seed=2)


def _peft_model(model_dir, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter).eval()


def _hidden(model):
    with torch.no_grad():
        return model(input_ids=IDS).last_hidden_state


# ---------------------------------------------------------------------------------------------
# forward_model


def test_peft_merge_equals_load_model_and_restores_exactly(tiny_model_dir, adapter_dir):
    peft_model = _peft_model(tiny_model_dir, adapter_dir)
    layers = [m for m in peft_model.modules() if hasattr(m, "merged_adapters") and hasattr(m, "lora_A")]
    assert layers
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    tensors = {n: p.data for n, p in peft_model.named_parameters()}
    with torch.no_grad():
        logits_before = peft_model(input_ids=IDS).logits

    with forward_model(peft_model) as base:
        assert type(base).__name__ == "LlamaModel"
        merged_hidden = _hidden(base)
        merged_digest = weights_digest(base)
        assert all(m.merged for m in layers)

    reference = load_model(tiny_model_dir, adapter=adapter_dir, device="cpu", dtype="fp32")
    assert torch.equal(merged_hidden, _hidden(reference))
    assert merged_digest == weights_digest(reference)
    plain = load_model(tiny_model_dir, device="cpu", dtype="fp32")
    assert not torch.equal(merged_hidden, _hidden(plain)), "the adapter must change the outputs"
    assert merged_digest != weights_digest(plain)

    # the original tensors are back (same storage, same bits) and peft's bookkeeping too
    for name, p in peft_model.named_parameters():
        assert p.data is tensors[name] or p.data.data_ptr() == tensors[name].data_ptr(), name
        assert torch.equal(p, before[name]), name
    assert all(m.merged_adapters == [] and not m.merged for m in layers)
    with torch.no_grad():
        assert torch.equal(peft_model(input_ids=IDS).logits, logits_before)


def test_peft_merge_that_replaces_the_parameter_is_undone(tiny_model_dir, adapter_dir, monkeypatch):
    """bitsandbytes and torchao layers merge by putting a new Parameter in the base layer's slot
    (``base.weight = Params4bit(...)``); the original object must come back, unmerged."""
    from peft.tuners.lora import Linear as LoraLinear

    peft_model = _peft_model(tiny_model_dir, adapter_dir)
    plain_merge = LoraLinear.merge

    def merge_by_replacing(self, *args, **kwargs):
        base = self.get_base_layer()
        merged = base.weight.data.clone()
        original = base.weight.data
        base.weight.data = merged
        plain_merge(self, *args, **kwargs)
        base.weight.data = original
        base.weight = torch.nn.Parameter(merged, requires_grad=False)  # a new object, merged

    monkeypatch.setattr(LoraLinear, "merge", merge_by_replacing)
    slots = {n: p for n, p in peft_model.named_parameters()}
    before = {n: p.detach().clone() for n, p in slots.items()}
    with torch.no_grad():
        logits_before = peft_model(input_ids=IDS).logits
    with forward_model(peft_model) as base:
        first = _hidden(base)
    with forward_model(peft_model) as base:  # merged once, not on top of the first merge
        assert torch.equal(_hidden(base), first)
    monkeypatch.undo()
    reference = load_model(tiny_model_dir, adapter=adapter_dir, device="cpu", dtype="fp32")
    assert torch.equal(first, _hidden(reference))
    for name, p in peft_model.named_parameters():
        assert p is slots[name] and torch.equal(p, before[name]), name
    with torch.no_grad():
        assert torch.equal(peft_model(input_ids=IDS).logits, logits_before)


def test_peft_restored_after_an_error_and_under_inference_mode(tiny_model_dir, adapter_dir):
    peft_model = _peft_model(tiny_model_dir, adapter_dir)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    with pytest.raises(RuntimeError, match="boom"):
        with forward_model(peft_model):
            raise RuntimeError("boom")
    assert all(torch.equal(p, before[n]) for n, p in peft_model.named_parameters())
    with torch.no_grad(), forward_model(peft_model) as base:
        expected = _hidden(base)
    with torch.inference_mode(), forward_model(peft_model) as base:
        assert torch.equal(base(input_ids=IDS).last_hidden_state, expected)
    assert all(torch.equal(p, before[n]) for n, p in peft_model.named_parameters())
    # an adapter merged by the user stays merged, with the same weights
    peft_model.merge_adapter()
    merged = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    with forward_model(peft_model) as base:
        assert torch.equal(_hidden(base), expected)
    assert all(torch.equal(p, merged[n]) for n, p in peft_model.named_parameters())
    assert all(m.merged for m in peft_model.modules() if hasattr(m, "lora_A"))


def test_plain_models_and_wrappers_yield_the_base_model(tiny_model_dir, tmp_path):
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from trim_fast.models.tiny import tiny_model

    base = tiny_model("llama")
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with forward_model(base) as b:
        assert b is base
    with forward_model(lm) as b:
        assert b is lm.model
    with forward_model(torch.nn.DataParallel(lm)) as b:
        assert b is lm.model
    with forward_model(torch.compile(lm)) as b:
        assert b is lm.model
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    try:
        with forward_model(Accelerator(cpu=True).prepare(lm)) as b:
            assert b is lm.model
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(lm)
        with forward_model(torch.compile(ddp)) as b:
            assert b is lm.model

        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        sharded = tiny_model("llama")
        fully_shard(sharded, mesh=init_device_mesh("cpu", (1,)))
        with pytest.raises(ValueError, match="sharded"):
            with forward_model(sharded):
                pass
    finally:
        dist.destroy_process_group()


def test_refuses_train_mode_and_non_models(tiny_model_dir, adapter_dir):
    from trim_fast.models.tiny import tiny_model

    model = tiny_model("llama").train()
    with pytest.raises(ValueError, match=r"training mode \(dropout active\): call model.eval\(\)"):
        with forward_model(model):
            pass
    peft_model = _peft_model(tiny_model_dir, adapter_dir).train()
    with pytest.raises(ValueError, match="training mode"):
        with forward_model(torch.nn.DataParallel(peft_model)):
            pass
    for bad, named in [("HuggingFaceTB/SmolLM2-135M", "str"), (torch.nn.Linear(2, 2).eval(), "Linear"),
                       ({"model": 1}, "dict")]:
        with pytest.raises(TypeError, match=f"got .*{named}.*expected a transformers PreTrainedModel"):
            with forward_model(bad):
                pass


def test_refuses_prompt_learning_adapters(tiny_model_dir):
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    pt = get_peft_model(lm, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)).eval()
    with pytest.raises(TypeError, match="prompt learning"):
        with forward_model(pt):
            pass


# ---------------------------------------------------------------------------------------------
# weights_digest


def test_digest_same_weights_whatever_the_spelling_or_dtype(tiny_model_dir, monkeypatch):
    parent, leaf = os.path.split(tiny_model_dir)
    monkeypatch.chdir(parent)
    digests = {weights_digest(load_model(spelling, device="cpu", dtype=dtype))
               for spelling in (f"./{leaf}", f"{leaf}/", leaf) for dtype in ("fp32", "bf16")}
    assert digests == {weights_digest(load_model(tiny_model_dir, device="cpu", dtype="fp32"))}
    assert model_id(f"./{leaf}") == model_id(f"{leaf}/") == model_id(leaf) == leaf


def test_digest_changes_with_the_weights_and_the_adapter(tiny_model_dir, adapter_dir, other_adapter_dir,
                                                         tmp_path):
    from safetensors.torch import load_file, save_file

    copy = str(tmp_path / "model")
    shutil.copytree(tiny_model_dir, copy)
    original = weights_digest(load_model(copy, device="cpu", dtype="fp32"))
    assert original == weights_digest(load_model(tiny_model_dir, device="cpu", dtype="fp32"))

    weights = load_file(os.path.join(copy, "model.safetensors"))
    name = "model.layers.1.mlp.down_proj.weight"
    weights[name] = weights[name].clone()
    weights[name][3, 5] += 0.25  # one element, in place: same size, same file name
    save_file(weights, os.path.join(copy, "model.safetensors"), metadata={"format": "pt"})
    assert weights_digest(load_model(copy, device="cpu", dtype="fp32")) != original

    with_a = weights_digest(load_model(tiny_model_dir, adapter=adapter_dir, device="cpu", dtype="fp32"))
    with_b = weights_digest(load_model(tiny_model_dir, adapter=other_adapter_dir, device="cpu", dtype="fp32"))
    assert len({original, with_a, with_b}) == 3


def test_digest_is_exact_integer_arithmetic():
    """Order-independent sums: a permuted reduction (transposed storage) gives the same digest,
    and a swap of two values in one tensor, or a one-ulp bf16 change, gives another."""
    from trim_fast.models.tiny import tiny_model

    model = tiny_model("llama", hidden_size=64)
    d0 = weights_digest(model)
    w = model.layers[0].mlp.up_proj.weight
    with torch.no_grad():
        w.data = w.data.t().contiguous().t()  # same values, other memory layout
    assert weights_digest(model) == d0
    with torch.no_grad():
        w[0, 0], w[0, 1] = w[0, 1].clone(), w[0, 0].clone()
    d1 = weights_digest(model)
    assert d1 != d0
    with torch.no_grad():
        w[0, 0], w[0, 1] = w[0, 1].clone(), w[0, 0].clone()
        bits = w[7, 9].to(torch.bfloat16).view(torch.int16) + 1
        w[7, 9] = bits.view(torch.bfloat16).float()
    assert weights_digest(model) not in (d0, d1)


@pytest.mark.gpu
def test_digest_same_on_cpu_and_cuda(tiny_model_dir):
    cpu = weights_digest(load_model(tiny_model_dir, device="cpu", dtype="fp32"))
    assert weights_digest(load_model(tiny_model_dir, device="cuda", dtype="bf16")) == cpu
    assert weights_digest(load_model(tiny_model_dir, device="cuda", dtype="fp32")) == cpu


# ---------------------------------------------------------------------------------------------
# loading: paths, network, pickles, progress


@pytest.mark.parametrize("name", ["./missing", "../missing", "/no/such/dir", "~/no_such_dir_xyz",
                                  "missing/", "models/tiny2", "a/b/c", "missing.gguf"])
def test_missing_path_like_names_fail_at_once_without_network(name, tmp_path, monkeypatch, no_network,
                                                              tiny_model_dir):
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    for call in (lambda: load_model(name), lambda: load_tokenizer(name), lambda: load_causal_lm(name)):
        with pytest.raises(FileNotFoundError, match="not found|no such directory"):
            call()
    if not name.endswith(".gguf"):
        with pytest.raises(FileNotFoundError, match=r"--adapter .*no such directory"):
            load_model(tiny_model_dir, adapter=name)


def test_local_model_and_adapter_load_without_network(tiny_model_dir, adapter_dir, no_network, caplog):
    caplog.set_level(logging.INFO, logger="trim_fast.models")
    load_tokenizer(tiny_model_dir)
    load_model(tiny_model_dir, adapter=adapter_dir, device="cpu")
    load_causal_lm(tiny_model_dir, device="cpu")
    assert not [r for r in caplog.records if "network" in r.getMessage()]
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_model(tiny_model_dir, adapter="my_adapter")  # no org/: a missing local name, not the hub


def test_hub_id_warns_before_any_request(monkeypatch, caplog, tiny_model_dir):
    """The warning comes first; a refused connection then fails as a clear ConnectionError."""
    seen = []

    def refuse(*args, **kwargs):
        seen.append([r.getMessage() for r in caplog.records if r.name == "trim_fast.models"])
        raise OSError("connection refused (test)")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(hub, "HUB_NO_ANSWER_S", 0.5)
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    caplog.set_level(logging.WARNING, logger="trim_fast.models")
    for call, repo in [(lambda: load_model("some-org/some-model", device="cpu"), "model 'some-org/some-model'"),
                       (lambda: load_model(tiny_model_dir, adapter="some-org/lora"), "adapter 'some-org/lora'")]:
        seen.clear()
        caplog.clear()
        t0 = time.monotonic()
        with pytest.raises(ConnectionError, match="did not answer"):
            call()
        assert time.monotonic() - t0 < 15
        assert seen and all(any("using the network" in m and repo in m for m in s) for s in seen), seen


def test_silent_hub_endpoint_fails_within_a_bound(silent_hub):
    """An endpoint that accepts connections and never answers: a clear error, bounded time."""
    script = textwrap.dedent("""
        import logging, time
        logging.basicConfig(level=logging.WARNING, format="LOG %(name)s %(message)s")
        import trim_fast.hub as H
        import trim_fast.models.loading as L
        H.HUB_TIMEOUT_S, H.HUB_NO_ANSWER_S = 1.0, 3.0   # the defaults (10 s, 30 s) fail in ~35 s
        t0 = time.monotonic()
        try:
            L.load_model("org/name", device="cpu")
        except ConnectionError as e:
            print("FAILED_IN", round(time.monotonic() - t0, 1), "|", e)
    """)
    out = subprocess.run([sys.executable, "-c", script], env=silent_hub.env, capture_output=True,
                         text=True, timeout=90)
    text = out.stdout + out.stderr
    assert "FAILED_IN" in out.stdout, text[-3000:]
    seconds = float(out.stdout.split("FAILED_IN")[1].split("|")[0])
    assert seconds < 12, text[-3000:]
    assert "did not answer" in out.stdout and "org/name" in out.stdout
    assert "LOG trim_fast.models using the network: fetching model 'org/name'" in out.stderr
    assert silent_hub.accepted, "the request must have reached the silent server"


def test_pickled_weights_are_refused_with_a_reason(tiny_model_dir, adapter_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called on user files")

    model = tmp_path / "pickled_model"
    model.mkdir()
    shutil.copy(os.path.join(tiny_model_dir, "config.json"), model)
    torch.save(load_file(os.path.join(tiny_model_dir, "model.safetensors")), model / "pytorch_model.bin")
    adapter = tmp_path / "pickled_adapter"
    adapter.mkdir()
    shutil.copy(os.path.join(adapter_dir, "adapter_config.json"), adapter)
    torch.save(load_file(os.path.join(adapter_dir, "adapter_model.safetensors")), adapter / "adapter_model.bin")
    monkeypatch.setattr(torch, "load", no_unpickling)

    for call in (lambda: load_model(str(model)), lambda: load_causal_lm(str(model)),
                 lambda: load_model(tiny_model_dir, adapter=str(adapter))):
        with pytest.raises(ValueError, match=r"pickled .*never loads pickles.*safetensors"):
            call()


def test_no_progress_silences_the_loading_bars(tiny_model_dir, capfd):
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    load_model(tiny_model_dir, device="cpu", progress=True)
    assert "Loading weights" in capfd.readouterr().err  # the check below can fail
    load_model(tiny_model_dir, device="cpu", progress=False)
    load_tokenizer(tiny_model_dir, progress=False)
    assert capfd.readouterr().err == ""
    assert hf_logging.is_progress_bar_enabled() == was


def test_embedded_smollm2_no_progress_and_digest(capfd):
    """The one SmolLM2 load: no GGUF conversion bar with progress off; fp32 and bf16 weights
    of the real model have one digest."""
    model = load_model(device="cpu", dtype="fp32", progress=False)
    err = capfd.readouterr().err
    assert "Converting" not in err and "Loading weights" not in err, err[-500:]
    d32 = weights_digest(model)
    assert weights_digest(model.to(torch.bfloat16)) == d32


def test_resolve_keeps_its_contract(tiny_model_dir, tmp_path):
    path, kw = loading._resolve(None)
    assert kw == {"gguf_file": os.path.basename(loading.embedded_model_path()), "local_files_only": True}
    assert loading._resolve(tiny_model_dir) == (tiny_model_dir, {"local_files_only": True})
    assert loading._resolve("org/name") == ("org/name", {})
    assert model_id(None) == loading.DEFAULT_MODEL and model_id("org/name") == "org/name"
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ValueError, match="not .gguf"):
        loading._resolve(str(tmp_path / "w.txt"))
