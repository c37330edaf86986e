"""Each member of an in-fold ensemble kept in its fold file (``member_probs``), scored alone in ``results.json`` and
read by ``epir evaluate --parts`` (issue 13, round 31)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from epir.cli import main
from epir.engine import folds
from epir.engine.evaluate import agreement_of_runs, part_scores, read_parts
from epir.engine.loso import run_loso
from epir.engine.results import ensemble_members, format_summary
from epir.errors import ConfigError
from fakes import record_returns
from test_member_overrides import RECENTRE, run_cfg


def test_a_fold_keeps_each_members_probabilities(fake_dataset, monkeypatch) -> None:
    """member_probs: each member's own held-out probabilities in member order, whose mean is the fold's; a fold of
    one model keeps none."""
    seen: list[torch.Tensor] = []
    monkeypatch.setattr(folds, "predict_proba", record_returns(folds.predict_proba, seen))
    subject = fake_dataset.subject_list()[0]
    rec = folds.run_fold(fake_dataset, run_cfg(fold_batch=1), subject, seed=0)
    assert len(rec["member_probs"]) == 2
    for kept, member in zip(rec["member_probs"], seen):
        np.testing.assert_allclose(kept, member.numpy())
    np.testing.assert_allclose(np.mean(rec["member_probs"], axis=0), rec["probs"], atol=1e-6)
    assert "member_probs" not in folds.run_fold(fake_dataset, run_cfg((), fold_batch=1), subject, seed=0)
    # a group of folds keeps the same members as each fold alone
    subjects = fake_dataset.subject_list()[:2]
    group = folds.run_fold_group(fake_dataset, run_cfg(fold_batch=2), [(0, s) for s in subjects])
    for s, got in zip(subjects, group):
        alone = folds.run_fold(fake_dataset, run_cfg(fold_batch=1), s, seed=0)
        np.testing.assert_allclose(got["member_probs"], alone["member_probs"], atol=1e-6)


@pytest.fixture
def member_run(fake_dataset, tmp_path) -> Path:
    """A 3-fold, 2-seed run of an ensemble of two STSTNets, the second on recentred maps."""
    out = tmp_path / "members"
    run_loso(run_cfg(folds=tuple(fake_dataset.subject_list()[:3]), seeds=(0, 1), report=False), fake_dataset,
             out_dir=out, progress=False)
    return out


def test_a_run_scores_each_member_alone(member_run, capsys) -> None:
    """results.json's members: each member's overrides and seed-mean scores (those --parts reads from the fold
    files) and, for member 1, where it errs against member 0; the summary says them in a line."""
    results = json.loads((member_run / "results.json").read_text())
    members = results["members"]
    assert [(m["member"], m["overrides"]) for m in members] == list(enumerate(RECENTRE))
    scored = part_scores(member_run)
    assert list(scored) == ["member 0", "member 1"]
    for m, s in zip(members, scored.values()):
        assert m["uf1"] == pytest.approx(s["uf1"]) and m["uar"] == pytest.approx(s["uar"])
    assert "versus_member_0" not in members[0] and members[1]["versus_member_0"]["names"] == ["member 1", "member 0"]
    line = ensemble_members(results)
    assert line is not None and f"member 1 ({RECENTRE[1]}) UF1 {members[1]['uf1']:.4f}" in line
    assert "where it errs against member 0: both wrong" in line
    assert f"ensemble members alone (mean over seeds): {line}" in format_summary(results)
    assert ensemble_members({**results, "members": [{"member": 0}]}) is None  # a hand-edited file: no line
    # epir evaluate --parts: each part's score; with --agreement, member 1 against member 0 and each one's seeds
    assert main(["evaluate", str(member_run), "--parts"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"Each part of {member_run} alone") and "member 0" in text and "member 1" in text
    assert main(["evaluate", str(member_run), "--parts", "--agreement"]) == 0
    text = capsys.readouterr().out
    assert f"A = {member_run} member 1, B = {member_run} member 0" in text and "A's seeds" in text
    agreed = agreement_of_runs(member_run, parts=True)
    assert agreed["more"] == [] and agreed["versus"]["q"] == pytest.approx(members[1]["versus_member_0"]["q"])


def test_a_damaged_member_record_stops_the_resume_and_the_reading(member_run, fake_dataset) -> None:
    """A fold file whose members do not average to its probabilities, or that lost them, is named."""
    fold = sorted((member_run / "folds").rglob("*.json"))[0]
    rec = json.loads(fold.read_text())
    swapped = [rec["member_probs"][0], [row[::-1] for row in rec["member_probs"][1]]]
    fold.write_text(json.dumps({**rec, "member_probs": swapped}))
    cfg = run_cfg(folds=tuple(fake_dataset.subject_list()[:3]), seeds=(0, 1), report=False)
    with pytest.raises(ConfigError, match=f"{fold}: the mean of its member_probs is not the ensemble's"):
        run_loso(cfg, fake_dataset, out_dir=member_run, progress=False)
    fold.write_text(json.dumps({**rec, "member_probs": [rec["member_probs"][0]]}))
    with pytest.raises(ConfigError, match="its member_probs are not a list of 2 or more members'"):
        run_loso(cfg, fake_dataset, out_dir=member_run, progress=False)
    fold.write_text(json.dumps({k: v for k, v in rec.items() if k != "member_probs"}))  # as before round 31
    with pytest.raises(ConfigError, match=f"{fold} does not keep its ensemble members' own probabilities"):
        read_parts(member_run)
    run_loso(cfg, fake_dataset, out_dir=member_run, progress=False)  # resumed: the fold is kept, the members not
    assert "members" not in json.loads((member_run / "results.json").read_text())


def test_the_parts_of_a_blend_of_members_and_a_teacher(fake_dataset, tmp_path, capsys) -> None:
    """A run with a teacher and two members has four parts; --parts --agreement reads the model against the
    teacher and member 1 against member 0; --versus --parts --agreement says all of it in one command."""
    cfg = run_cfg(folds=tuple(fake_dataset.subject_list()[:3]), seeds=(0, 1), report=False)
    cfg = replace(cfg, train=replace(cfg.train, distill="ststnet", distill_weight=0.0,
                                     distill_overrides=("train.epochs=1",), distill_mix=0.5))
    out, other = tmp_path / "blend", tmp_path / "blend-lr"
    run_loso(cfg, fake_dataset, out_dir=out, progress=False)
    run_loso(replace(cfg, train=replace(cfg.train, lr=cfg.train.lr * 2)), fake_dataset, out_dir=other,
             progress=False)
    parts = read_parts(out)
    assert list(parts) == ["model", "teacher", "member 0", "member 1"]
    model = parts["model"].predictions
    mean = (parts["member 0"].predictions.filter(like="prob_") + parts["member 1"].predictions.filter(like="prob_")) / 2
    np.testing.assert_allclose(model.filter(like="prob_").to_numpy(), mean.to_numpy(), atol=1e-5)
    assert main(["evaluate", str(out), "--parts", "--agreement"]) == 0
    text = capsys.readouterr().out
    assert f"A = {out} model, B = {out} teacher" in text and "member 1 vs member 0" in text
    assert main(["evaluate", str(other), "--versus", str(out), "--parts", "--agreement", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got["parts"]) == {"model", "teacher", "member 0", "member 1"}
    assert got["agreement"]["versus"]["names"] == [str(other), str(out)]
    assert got["parts_agreement"]["versus"]["names"] == [f"{other} model", f"{other} teacher"]
    assert got["parts_agreement"]["more"][0]["names"] == ["member 1", "member 0"]
    assert main(["evaluate", str(other), "--versus", str(out), "--parts", "--agreement"]) == 0
    text = capsys.readouterr().out
    for name in (f"{other} - {out}", f"{other} member 1 - {out} member 1"):
        assert f"{name}, paired subject bootstrap" in text
    assert f"A = {other}, B = {out}" in text and f"A = {other} model, B = {other} teacher" in text
