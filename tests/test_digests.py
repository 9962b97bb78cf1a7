"""trim_fast.digests: the stored digests keep their byte values. Work directories, banks and score
tables hold these values across runs; a change here silently invalidates every user's cache. The
pinned values were computed with the hashing code as it stood before it moved into one module."""
from __future__ import annotations

import torch

from trim_fast import digests
from trim_fast.bank.fingerprints import FingerprintBank
from trim_fast.data import record_to_example, tokenizer_digest
from trim_fast.models.digest import weights_digest
from trim_fast.run.workdir import _checksum
from trim_fast.scoring.engine import chunk_digest


def test_record_content_digests_are_pinned():
    assert digests.jsonl_line_digest(b'{"id": "a", "text": "hi"}').hex() == \
        "b7a61dfab9fdd432d85eaccad73aefe7"
    value = {"id": "a", "n": [1, 2.5, None, True, b"\x00", "\u00e9"], "d": {"k": float("nan")}}
    assert digests.value_digest(value).hex() == "00ff1374c49c1638a90738053cef0d3b"
    exs = [record_to_example({"id": "a", "text": "hi"}, "text", source="s", line=1),
           record_to_example({"id": "b", "messages": [{"role": "user", "content": "q"},
                                                      {"role": "assistant", "content": "r"}]},
                             "messages", source="s", line=2)]
    assert chunk_digest(exs) == "62d3375f11b6bf668e576c9ec5621c73"
    assert digests.pool_digest(["ab", "cd"]) == "d2c8e95841ccbc0c3cb3edc9201a6981"


def test_keys_and_checksums_are_pinned():
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert digests.batch_key(ids.numpy().tobytes(), tuple(ids.shape), b"tag").hex() == \
        "b8c715bcc65d97d490bb5ac5b28044c8"
    assert _checksum({"x": torch.arange(4, dtype=torch.int64), "a": torch.tensor([1.5, -2.0])}) == \
        "7c996d6008213a31ddf041333f10edd9"


class _Tokenizer:
    chat_template = "{{ x }}"
    all_special_tokens = ["<s>", "</s>"]

    def get_vocab(self):
        return {"a": 0, "\u00e9": 1, "<s>": 2}


def test_identities_are_pinned():
    assert tokenizer_digest(_Tokenizer()) == "17f44e1761194082"
    assert digests.settings_identity({"b": 1, "a": [1, "x"]}) == "1227a1a20c9e230a"
    arrays = [torch.tensor([3, 1, 2]), torch.arange(6.).view(3, 2) / 4, torch.tensor([0.5, 0.25])]
    assert digests.bank_identity(a.numpy().tobytes() for a in arrays) == "27d3fcee4ca83163"
    bank = FingerprintBank(classes=torch.tensor([1, 2, 3]),
                           vectors=torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]]),
                           counts=torch.tensor([1, 2, 3]), mass=torch.tensor([1.0, 2.0, 0.5]),
                           center=torch.tensor([0.5, 0.25]))
    assert bank.digest() == "89201e3917466f66"
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Embedding(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(6.).view(2, 3) / 7)
        model[0].bias.copy_(torch.tensor([0.5, -1.0]))
        model[1].weight.copy_(torch.arange(8.).view(4, 2) - 3.25)
    assert weights_digest(model) == \
        "w1:c3672f46a1691c6f9c3141f4aa4ae8b13b2b3ac689e65ba00b012d7c10fc1af6"


def test_code_digest_follows_the_code():
    def f(x):
        return x + 1

    def g(x):
        return x + 2

    assert digests.code_digest(f.__code__) != digests.code_digest(g.__code__)
    assert len(digests.code_digest(f.__code__)) == 16
