import importlib.util
import os
import socket
import threading
from types import SimpleNamespace

import torch

# Triton kernels run on the CPU through the interpreter when there is no GPU; this must be set
# before Triton compiles any kernel.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    # The GPU image has no faiss: tests of the faiss backends skip there (CI installs it).
    missing = {"gpu": not torch.cuda.is_available(),
               "faiss": importlib.util.find_spec("faiss") is None}
    for item in items:
        for marker, absent in missing.items():
            if absent and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=f"needs {marker}"))


@pytest.fixture(scope="session")
def smollm_tokenizer():
    """The embedded SmolLM2 tokenizer (from the GGUF file; no download)."""
    from trim_fast.models.loading import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm_tokenizer):
    """A tiny random Llama (GQA) saved with the SmolLM2 tokenizer: an HF model directory."""
    from transformers import AutoModelForCausalLM

    from trim_fast.models.tiny import tiny_config

    path = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config("llama")).save_pretrained(path)
    smollm_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A small labelled demo pool (60 examples, 6 families) with 4 targets per family."""
    from trim_fast.demo.generate import generate

    return generate(str(tmp_path_factory.mktemp("demo")), pool_size=60, targets_per_family=4, seed=0)


@pytest.fixture
def silent_hub(tmp_path):
    """A hub endpoint that accepts connections and never answers: ``endpoint``, the
    ``accepted`` connections, and ``env`` for a child process that talks to it (huggingface_hub
    reads HF_ENDPOINT at import, so the client runs in a child process)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted = []

    def serve():
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "TRANSFORMERS_OFFLINE", "HUGGINGFACE"))}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p))
    yield SimpleNamespace(endpoint=endpoint, accepted=accepted, env=env)
    server.close()
    for conn in accepted:
        conn.close()


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection or name lookup fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network use attempted: {args[1:]!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
