"""trim_fast.hub: one path-versus-hub-id rule, used by the model loader and the data sources alike."""
from __future__ import annotations

import pytest

from trim_fast.data import DataError, open_records
from trim_fast.hub import is_hub_id
from trim_fast.models.loading import load_model

NAMES = {
    "org/name": True, "name": True, "Qwen/Qwen2.5-0.5B": True,
    "./x": False, "../x": False, ".x": False, "/abs/x": False, "~/x": False, "x/": False,
    "a/b/c": False, "org/data.jsonl": False, "org/model.safetensors": False,
    "here/x": False,  # "here" is a directory made by the test
    "bad name": False, "": False,
}


def test_the_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()
    assert {n: is_hub_id(n) for n in NAMES} == NAMES


@pytest.mark.parametrize("name", [n for n in NAMES if n])
def test_models_and_data_classify_a_missing_name_alike(name, tmp_path, monkeypatch):
    """A missing name the rule calls a path is "no such ..." at once on both sides; a hub id
    goes on towards the hub (offline here, so it fails there, differently)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    try:
        open_records(name)
        data_says_path = False
    except DataError as err:
        data_says_path = "no such file" in str(err)
    try:
        load_model(name, device="cpu")
        model_says_path = False
    except FileNotFoundError as err:
        model_says_path = "no such directory" in str(err)
    except (OSError, ValueError):
        model_says_path = False
    assert data_says_path == model_says_path == (not NAMES[name])
