"""Selection with inner groups shared by all folds (``train.select_shared``): the held-out subject's whole group
takes no part in its fold's choice, the choice made before the folds equals the one a fold makes alone, and the
run records it."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from epir.config import DataConfig, EvalConfig, ModelConfig, RunConfig, check_ranges
from epir.engine import folds, selection
from epir.engine.loso import run_loso
from epir.engine.selection import select_shared, shared_seed
from epir.errors import ConfigError
from epir.models import default_recipe
from fakes import record_returns, shared_choices_in_workers, spy_on_selection_training


def shared_cfg(groups: int = 3, **eval_kw) -> RunConfig:
    eval_kw.setdefault("threads", 1)
    recipe = replace(default_recipe("ststnet"), epochs=1, select=("", "train.epochs=2"), select_shared=groups)
    return RunConfig(model=ModelConfig(name="ststnet"), data=DataConfig(dataset="megc2019"), train=recipe,
                     eval=EvalConfig(**eval_kw))


def group_of(dataset, cfg: RunConfig, seed: int, subject: str) -> list[str]:
    groups = selection._deal(list(dataset.subjects), cfg.train.select_shared, shared_seed(seed), "test")
    return next(g for g in groups if subject in g)


@pytest.mark.parametrize("fold_batch", [1, 4])
def test_shared_selection_never_trains_on_the_held_out_group(fake_dataset, monkeypatch, fold_batch: int) -> None:
    """Spy on every training call of the run: no inner model of the fold's choice sees a row of the held-out
    subject's group, and no model at all sees the held-out subject's rows."""
    trained = spy_on_selection_training(monkeypatch)
    subject = fake_dataset.subject_list()[1]
    cfg = shared_cfg(fold_batch=fold_batch, folds=(subject,))
    mates = group_of(fake_dataset, cfg, 0, subject)
    outside = fake_dataset.x[torch.tensor([s in mates for s in fake_dataset.subjects])]
    r = run_loso(cfg, fake_dataset, progress=False)
    inner = trained[:-1]  # the last training is the fold's own model, on every subject but the held-out one
    assert len(inner) >= cfg.train.select_shared - 1, "selection trained nothing"
    for x in inner:
        for row in outside:
            assert not (x == row).flatten(1).all(1).any(), "a row of the held-out subject's group reached selection"
    assert r["selection"]["select_shared"] == 3 and sum(r["selection"]["chosen_counts"].values()) == 1


def test_the_held_out_subject_cannot_change_its_folds_choice(fake_dataset) -> None:
    """Replace the held-out subject's maps and labels: the inner scores of its fold stay exactly the same."""
    cfg = shared_cfg()
    subject = fake_dataset.subject_list()[2]
    rows = torch.tensor([s == subject for s in fake_dataset.subjects])
    x, y = fake_dataset.x.clone(), fake_dataset.y.clone()
    x[rows] = torch.rand_like(x[rows]) * 255
    y[rows] = (y[rows] + 1) % len(fake_dataset.class_names)
    other = replace(fake_dataset, x=x, y=y)
    a = select_shared(fake_dataset, cfg, 0, [subject])[subject]
    b = select_shared(other, cfg, 0, [subject])[subject]
    assert a == b
    assert a[1]["group"] == b[1]["group"] and len(a[1]["scores"]) == 2


def test_choices_made_before_the_folds_equal_a_folds_own(fake_dataset, tmp_path) -> None:
    """The run's pre-pass and a fold run alone (no choices given) choose alike; every fold records its group's
    choice and the run its cost."""
    cfg = shared_cfg(fold_batch=1)
    out = tmp_path / "run"
    r = run_loso(cfg, fake_dataset, out, progress=False)
    assert r["selection"]["shared_seconds"] > 0
    assert sum(r["selection"]["chosen_counts"].values()) == len(fake_dataset.subject_list())
    recs = {p.stem: json.loads(p.read_text()) for p in (out / "folds" / "seed0").glob("*.json")}
    by_group: dict[int, list[float]] = {}
    for rec in recs.values():
        sel = rec["selection"]
        assert sel["select_shared"] == 3 and sel["chosen"] == int(np.argmax(sel["scores"]))
        assert by_group.setdefault(sel["group"], sel["scores"]) == sel["scores"]  # one choice per group
    assert len(by_group) == 3
    subject = fake_dataset.subject_list()[0]
    alone = folds.run_fold(fake_dataset, cfg, subject, 0)
    assert alone["selection"] == next(rec["selection"] for rec in recs.values() if rec["subject"] == subject)


def test_select_shared_range(fake_dataset) -> None:
    for bad in (1, 2, -1):
        with pytest.raises(ConfigError, match="train.select_shared"):
            check_ranges(shared_cfg(groups=bad))
    check_ranges(shared_cfg(groups=0))
    with pytest.raises(ConfigError, match="needs at least 7 subjects"):
        select_shared(fake_dataset, shared_cfg(groups=7), 0, fake_dataset.subject_list()[:1])


def test_log_loss_criterion_chooses_the_lowest_inner_nll(fake_dataset) -> None:
    """train.select_metric=nll: scores are minus the pooled inner log-loss and the choice its lowest; the record
    keeps UF1, UAR and NLL whichever criterion chose."""
    cfg = shared_cfg()
    cfg = replace(cfg, train=replace(cfg.train, select_metric="nll"))
    subject = fake_dataset.subject_list()[0]
    chosen, info = select_shared(fake_dataset, cfg, 0, [subject])[subject]
    assert info["select_metric"] == "nll" and info["scores"] == [-n for n in info["nll"]]
    assert chosen == int(np.argmin(info["nll"])) and all(n > 0 for n in info["nll"])
    megc = select_shared(fake_dataset, shared_cfg(), 0, [subject])[subject][1]
    assert megc["nll"] == info["nll"] and megc["scores"] == [(f + r) / 2 for f, r in zip(megc["uf1"], megc["uar"])]
    with pytest.raises(ConfigError, match="train.select_metric"):
        check_ranges(replace(cfg, train=replace(cfg.train, select_metric="auc")))


def test_margin_keeps_the_runs_own_configuration_unless_beaten_by_more(fake_dataset) -> None:
    """train.select_margin: the candidate equal to the run's own configuration ('' here) is kept unless the best
    inner score beats it by more than the margin; the inner scores are the same whatever the margin."""
    subject = fake_dataset.subject_list()[0]
    free = select_shared(fake_dataset, shared_cfg(), 0, [subject])[subject][1]
    cfg = shared_cfg()
    assert selection.prior_candidate(cfg) == 0  # '' is the run's own configuration
    for margin in (1e-9, 2.0):
        kept = replace(cfg, train=replace(cfg.train, select_margin=margin))
        chosen, info = select_shared(fake_dataset, kept, 0, [subject])[subject]
        assert info["scores"] == free["scores"] and info["best"] == free["chosen"] == int(np.argmax(free["scores"]))
        assert info["prior"] == 0 and info["margin"] == margin
        beats = free["scores"][free["chosen"]] - free["scores"][0] > margin
        assert chosen == info["chosen"] == (free["chosen"] if beats else 0)
    # a margin of 2 can never be beaten (scores are in [0, 1]): every fold keeps its own configuration
    r = run_loso(replace(cfg, train=replace(cfg.train, select_margin=2.0)), fake_dataset, progress=False)
    assert r["selection"]["chosen_counts"] == {"": len(fake_dataset.subject_list()), "train.epochs=2": 0}
    assert r["selection"]["select_margin"] == 2.0 and "kept_prior" in r["selection"]


def test_margin_needs_a_candidate_equal_to_the_run(fake_dataset) -> None:
    cfg = shared_cfg()
    no_prior = replace(cfg, train=replace(cfg.train, select=("train.epochs=2", "train.epochs=3"), select_margin=0.02))
    assert selection.prior_candidate(replace(no_prior, train=replace(no_prior.train, select_margin=0))) is None
    with pytest.raises(ConfigError, match="no train.select candidate equals it"):
        select_shared(fake_dataset, no_prior, 0, fake_dataset.subject_list()[:1])
    for bad in (-0.1, float("nan")):
        with pytest.raises(ConfigError, match="train.select_margin"):
            check_ranges(replace(cfg, train=replace(cfg.train, select_margin=bad)))


def test_margin_on_the_teacher_mix_keeps_the_plain_average() -> None:
    """On the teacher-mix recipes the run's own configuration is the weight 0.5 (their base value)."""
    from epir.engine.ablate import lever_arm
    from epir.runsetup import make_config, resolve_config

    for recipe, index in (("teacher3-mix-coarse", 1), ("teacher-mix-shared", 2), ("teacher3-mix-grouped", 2)):
        cfg = resolve_config(make_config("epir", recipe=recipe))
        assert selection.prior_candidate(cfg) == index and cfg.train.select[index] == "train.distill_mix=0.5"
        arm, on = lever_arm(cfg, "select-margin")
        assert arm == "+select-margin" and resolve_config(on).train.select_margin == 0.02
        assert lever_arm(resolve_config(on), "select-margin")[0] == "-select-margin"


def test_inner_models_in_worker_processes_choose_as_one_process(fake_dataset, one_torch_thread) -> None:
    """select_shared(jobs=2) deals the pair models to two worker processes: the same inner scores and choices as
    one process (a batched EPIR, dropout on, depends on its rows, seed and recipe only, not on its partners)."""
    from epir.models.epir import EPIR_RECIPE

    cfg = replace(shared_cfg(threads=1), model=ModelConfig(name="epir", args={"dim": 24, "heads": 2}),
                  train=replace(EPIR_RECIPE, epochs=1, select=("", "train.epochs=2"), select_shared=3))
    shared_choices_in_workers(fake_dataset, cfg)


def test_batched_inner_models_choose_as_the_loop(fake_dataset, monkeypatch, one_torch_thread) -> None:
    """The inner pair models train one at a time on the CPU (``batches_well``: the loop is faster there) and
    batched where the model batches well (CUDA): both give the same inner scores and choices, dropout on."""
    from epir.models.epir import EPIR_RECIPE

    cfg = replace(shared_cfg(threads=1), model=ModelConfig(name="epir", args={"dim": 24, "heads": 2}),
                  train=replace(EPIR_RECIPE, epochs=1, select=("", "train.epochs=2"), select_shared=3))
    subjects = fake_dataset.subject_list()
    many = []
    monkeypatch.setattr(selection, "fit_many", record_returns(selection.fit_many, many))
    loop = select_shared(fake_dataset, cfg, 0, subjects)
    assert not many  # EPIR on the CPU: one at a time
    monkeypatch.setattr(selection, "batches_well", lambda name, device="cpu": True)
    batched = select_shared(fake_dataset, cfg, 0, subjects)
    assert many  # the batched path ran
    for s in subjects:
        assert batched[s][0] == loop[s][0]
        np.testing.assert_allclose(batched[s][1]["scores"], loop[s][1]["scores"], atol=1e-5)
