"""Stage membership is stated once, as field metadata in trim_fast.config; every list of "which
settings belong to which stage" is derived from it."""
from __future__ import annotations

import dataclasses

import pytest

from trim_fast import config
from trim_fast.bank import checks as bank_checks
from trim_fast.config import (BANK_FIELDS, SCORING_FIELDS, SHARED_WITH_POOL, STAGES,
                              SelectionConfig, setting, stage_fields)


def _stage_flags(command: str) -> set[str]:
    from trim_fast.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    fields = {f.name for f in dataclasses.fields(SelectionConfig)}
    return {a.dest for a in sub._actions if a.dest in fields}


def test_every_selection_setting_belongs_to_a_stage():
    assert all(f.metadata["stages"] for f in dataclasses.fields(SelectionConfig))


def test_the_lists_come_from_the_metadata():
    keyed = {s: {f.name for f in dataclasses.fields(SelectionConfig) if s in f.metadata["keyed"]}
             for s in STAGES}
    assert set(BANK_FIELDS) == keyed["fingerprint"] and set(SCORING_FIELDS) == keyed["score"]
    assert set(SHARED_WITH_POOL) == keyed["fingerprint"] & keyed["score"]
    assert bank_checks.SHARED_WITH_POOL is config.SHARED_WITH_POOL  # the bank checks use it
    cfg = SelectionConfig()
    assert set(cfg.bank_settings()) == set(BANK_FIELDS)
    assert set(cfg.scoring_settings()) == set(SCORING_FIELDS)


@pytest.mark.parametrize("command", STAGES)
def test_each_stage_command_takes_the_flags_of_its_stage(command):
    assert _stage_flags(command) == set(stage_fields(command))


def test_a_setting_keyed_by_a_stage_must_belong_to_it():
    with pytest.raises(ValueError, match="not among its stages"):
        setting(1, "x", stages=("score",), keyed=("fingerprint",))
    with pytest.raises(ValueError, match="not among its stages"):
        setting(1, "x", stages=("scoring",))
