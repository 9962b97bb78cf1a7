"""The pipeline under the faces (issue 21): the CLI only parses and calls, the evaluation embeds
through ``Selector.embed``, the scoring bar moves per batch."""
from __future__ import annotations

import json
import pathlib

import pytest
import torch

from trim_fast.cli import main

CLI = pathlib.Path(__file__).resolve().parent.parent / "trim_fast" / "cli.py"


def _old_mean_pooled_states(selector, records, layers):
    """The evaluation's own embedding before ``Selector.embed`` (issue 18), kept as the oracle."""
    from trim_fast.capture.forward import check_hidden_layer, loop_for
    from trim_fast.models.prepare import forward_model
    from trim_fast.scoring.engine import iter_chunks, tokenize_chunk

    cfg = selector.config
    out = {layer: [] for layer in layers}
    with forward_model(selector.model) as base:
        loop = loop_for(base, cfg, pad_id=selector.pad_id, layers=layers)
        for _, _, examples in iter_chunks(records, cfg.chunk_size):
            chunk = tokenize_chunk(selector.tokenizer, examples, cfg)
            pooled = {layer: [None] * len(chunk) for layer in layers}
            for hb in loop.hidden_batches(chunk):
                for layer in layers:
                    hidden = hb.states[check_hidden_layer(loop.base, layer)].float()
                    for row, i in enumerate(hb.index):
                        keep = hb.counted[row] if bool(hb.counted[row].any()) else hb.mask[row]
                        pooled[layer][i] = hidden[row][keep].mean(0).cpu()
            for layer in layers:
                out[layer].extend(pooled[layer])
    return {layer: torch.stack(v) for layer, v in out.items()}


def test_embed_equals_the_evaluations_previous_embeddings(tiny_model_dir, demo_data):
    from trim_fast import SelectionConfig, Selector
    from trim_fast.data import open_records

    sel = Selector(tiny_model_dir, config=SelectionConfig(max_length=64, max_tokens=256, chunk_size=16))
    pool = open_records(demo_data["pool"])
    want = _old_mean_pooled_states(sel, pool, (-1, 2))
    for layer in (-1, 2):
        got = sel.embed(pool, layer=layer)
        assert got.shape == (60, want[layer].shape[1]) and torch.equal(got, want[layer])
    assert not torch.equal(sel.embed(pool, layer=-1), sel.embed(pool, layer=-1, pooling="last"))
    with pytest.raises(Exception, match="pooling 'max'"):
        sel.embed(pool, pooling="max")


def test_scoring_bar_moves_per_batch(tiny_model_dir, demo_data, monkeypatch):
    from trim_fast import SelectionConfig, Selector
    from trim_fast.progress import Progress

    moves = []
    real = Progress.update

    def update(self, n=1, **postfix):
        if self.desc.startswith("scoring"):
            moves.append(n)
        return real(self, n, **postfix)

    real_init = Progress.__init__

    def init(self, total, desc, *a, **kw):
        self.desc = desc
        real_init(self, total, desc, *a, **kw)

    monkeypatch.setattr(Progress, "update", update)
    monkeypatch.setattr(Progress, "__init__", init)
    sel = Selector(tiny_model_dir, config=SelectionConfig(max_length=64, max_tokens=256, chunk_size=4096))
    scores = sel.select(demo_data["pool"], demo_data["targets"]["arithmetic"]).scores
    # one chunk (60 records < 4096), several batches: the bar moved once per batch, by its tokens
    assert len(moves) > 1 and sum(moves) == int(scores.n_tokens.sum())


def test_cli_only_parses_and_calls():
    assert len(CLI.read_text().splitlines()) < 350


def test_dry_run_needs_no_out(tiny_model_dir, demo_data, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["select", "--model", tiny_model_dir, *sum((["--pool", p] for p in demo_data["pool"]), []),
                 "--targets", demo_data["targets"]["arithmetic"], "--dry-run", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["pool_examples"] == 60
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("content, message", [
    ({"layerz": 3}, "unknown setting 'layerz' for 'select'"),
    ({"lora_r": "eight"}, "lora_r: 'eight' is not a valid int"),
    ({"pool": [{"a": 1}]}, "pool: expected one value"),
    ({"scope": "everything"}, "scope: 'everything' is not one of"),
])
def test_config_file_errors_name_the_file_and_key(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(content))
    assert main(["select", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"--config {bad}: " in err and message in err, err
