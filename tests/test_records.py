"""Typed records: one validating constructor each, round trips, errors that name the file and the key."""
from __future__ import annotations

import json

import pytest

from epir.engine.records import FoldRecord, LosoResults, Scores
from epir.errors import CheckpointError, ConfigError
from epir.inference.checkpoint import FORMAT, CheckpointMeta


def test_loso_results_from_json_and_its_errors(tmp_path):
    raw = {"protocol": "honest", "uf1": 0.7, "uar": 0.6, "uf1_std": 0.01, "seeds": [0, 1], "n": 10,
           "per_dataset": {"casme2": {"uf1": 0.8, "uar": 0.7, "n": 6}, "smic": {"uf1": 0.5, "uar": 0.4, "n": 4}},
           "class_names": ["a", "b"], "confusion": [[3, 2], [1, 4]], "model": "epir", "future_key": 1}
    r = LosoResults.from_json(raw)
    assert (r.uf1, r.uar, r.overall.uf1_std, r.overall.n, r.seeds) == (0.7, 0.6, 0.01, 10, (0, 1))
    assert [name for name, _ in r.rows()] == ["all", "casme2", "smic"]
    assert r.per_dataset["smic"] == Scores(0.5, 0.4, 0.0, 0.0, 4) and r.raw["future_key"] == 1
    (tmp_path / "results.json").write_text(json.dumps(raw))
    assert LosoResults.load(tmp_path).model == "epir"
    with pytest.raises(ConfigError, match="results.json: missing key.*uar"):
        LosoResults.from_json({"protocol": "honest", "uf1": 0.5}, "results.json")
    with pytest.raises(ConfigError, match=r"per_dataset\[smic\]: missing key"):
        LosoResults.from_json({**raw, "per_dataset": {"smic": {"uf1": 0.5}}})


def test_fold_record_round_trip_and_its_errors():
    d = {"seed": 0, "subject": "casme2/sub01", "indices": [3, 4], "true": [0, 1], "predicted": [0, 0],
         "probs": [[0.6, 0.4], [0.7, 0.3]], "epoch": 39, "seconds": 1.5, "n_train": 400, "clips": ["a", "b"],
         "curve": {"loss": [1.0], "acc": [0.5]}}
    rec = FoldRecord.from_json(d)
    assert rec.to_json() == d and rec.extra == {"curve": {"loss": [1.0], "acc": [0.5]}}
    with pytest.raises(ConfigError, match="f.json: missing key"):
        FoldRecord.from_json({k: v for k, v in d.items() if k != "probs"}, "f.json")
    with pytest.raises(ConfigError, match="differ in length"):
        FoldRecord.from_json({**d, "true": [0]})


def test_checkpoint_meta_is_validated_once_and_typed(tmp_path):
    meta = {"format": "epir-checkpoint", "format_version": 1, "epir_version": "x", "created": "now",
            "model": {"name": "epir", "args": {"num_classes": 2}}, "class_names": ["a", "b"],
            "input": {"channels": ["u", "v", "strain"], "size": 28, "transform": "none",
                      "normalization": {"mean": [1.0, 2.0, 3.0], "std": [1.0, 1.0, 1.0]}},
            "weights": {"file": "model.safetensors", "sha256": "0" * 64, "bytes": 10}}
    meta["format"] = FORMAT
    info = CheckpointMeta.from_json(meta, tmp_path / "checkpoint.json")
    assert (info.model_name, info.class_names, info.input_size, info.norm_mean) == ("epir", ("a", "b"), 28,
                                                                                    (1.0, 2.0, 3.0))
    with pytest.raises(CheckpointError, match=r"checkpoint.json: 'class_names' must be"):
        CheckpointMeta.from_json({**meta, "class_names": ["a", "a"]}, tmp_path / "checkpoint.json")


@pytest.mark.parametrize("edit, message", [
    ({"uf1": "0.7"}, r"uf1 is '0.7'; expected a finite number in \[0, 1\]"),
    ({"uar": float("nan")}, r"uar is nan"),
    ({"uf1": 1.5}, r"uf1 is 1.5"),
    ({"uf1": True}, r"uf1 is True"),
    ({"uar_std": -0.1}, r"uar_std is -0.1; expected a finite number >= 0"),
    ({"n": 2.5}, r"n is 2.5; expected a count"),
    ({"seeds": ["a"]}, r"seeds is \['a'\]; expected whole numbers\."),
    ({"confusion": [[1, -2]]}, r"confusion is .*; expected whole numbers >= 0"),
    ({"per_dataset": [1]}, r"per_dataset is list"),
    ({"per_dataset": {"smic": {"uf1": 0.5, "uar": 2}}}, r"per_dataset\[smic\]: uar is 2"),
])
def test_scores_that_are_not_scores_are_refused(edit, message):
    raw = {"protocol": "honest", "uf1": 0.7, "uar": 0.6, "seeds": [-1, 0]}  # a negative seed is a seed
    assert LosoResults.from_json(raw).seeds == (-1, 0)
    with pytest.raises(ConfigError, match=message) as info:
        LosoResults.from_json({**raw, **edit}, "run/results.json")
    assert str(info.value).startswith("run/results.json") and "with the same --out" in str(info.value)
