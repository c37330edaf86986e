"""Batched fold training (``epir.engine.batched``): N members trained as one vectorised model give what N
one-at-a-time trainings give, members never see each other's rows, and the LOSO engine's batched path keeps
fold files, resume and the one-at-a-time layout."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from epir.config import DataConfig, EvalConfig, ModelConfig, RunConfig, check_ranges
from epir.engine import batched as batched_mod
from epir.engine import folds
from epir.engine import train as train_mod
from epir.engine.batched import Member, fit_many, steps_per_epoch
from epir.engine.cost import forward_passes
from epir.engine.loso import format_summary, plan_groups, resolve_fold_batch, run_loso
from epir.engine.train import fit, masked_cross_entropy, predict_proba, snapshot_epochs
from epir.errors import ConfigError
from epir.losses import supervised_contrastive_loss
from epir.models import AUTO_FOLD_BATCH, batches_well, build_model, default_recipe
from fakes import interrupt_on_call, record_returns, spy_on_selection_training

#: Small models, their dropout and stochastic depth on: batched members replay the masks the loop draws.
SMALL = {"epir": {"dim": 24, "heads": 2}, "ststnet": {}}

#: The CPU always; a CUDA device where one is present (skipped otherwise, as in CI).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                   reason="needs a CUDA device"))]


def members(sizes=(20, 23, 17), seed: int = 0) -> list[Member]:
    g = torch.Generator().manual_seed(seed)
    return [Member(torch.rand(n, 3, 28, 28, generator=g) * 255, torch.randint(0, 3, (n,), generator=g),
                   seed=100 + i, name=f"m{i}") for i, n in enumerate(sizes)]


def one_at_a_time(model_cfg: ModelConfig, m: Member, recipe):
    torch.manual_seed(m.seed)
    model = build_model(model_cfg)
    norm = fit(model, m.x, m.y, recipe, seed=m.seed, num_classes=3)
    return model, norm


@pytest.mark.parametrize("name", ["epir", "ststnet"])
@pytest.mark.parametrize("extra", [{}, {"mixup": 0.4, "average": "ema", "rotate": 5.0, "scale": 0.1},
                                   {"shuffle": False, "order": "by-class"}])
def test_batched_members_match_one_at_a_time_training(name: str, extra: dict, one_torch_thread) -> None:
    """Same seeds and data order: the same weights (float tolerance) and predictions, members of unequal
    sizes included (their last batches are padded and masked out of the loss and of BatchNorm), dropout and
    stochastic depth on (each member replays the masks it draws alone)."""
    model_cfg = ModelConfig(name=name, args=SMALL[name])
    recipe = replace(default_recipe(name), epochs=2, batch_size=8, **extra)
    ms = members()
    assert len({steps_per_epoch(len(m.x), recipe.batch_size) for m in ms}) == 1  # equal steps, unequal last batch
    models, norms = fit_many(model_cfg, ms, recipe, num_classes=3)
    probe = torch.rand(6, 3, 28, 28, generator=torch.Generator().manual_seed(9)) * 255
    for m, model, norm in zip(ms, models, norms):
        ref, ref_norm = one_at_a_time(model_cfg, m, recipe)
        torch.testing.assert_close(norm.mean, ref_norm.mean)
        for (k, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
            if a.is_floating_point():
                torch.testing.assert_close(b, a, atol=2e-3, rtol=1e-3, msg=lambda s, k=k, m=m: f"{m.name} {k}: {s}")
            else:
                assert torch.equal(a, b), k
        torch.testing.assert_close(predict_proba(model, norm, probe), predict_proba(ref, ref_norm, probe),
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["epir", "ststnet"])
def test_a_members_model_does_not_depend_on_its_batch_partners(name: str, device: str, one_torch_thread,
                                                               monkeypatch) -> None:
    """Dropout and stochastic depth on: a member trained with others gets the weights it gets trained alone or
    beside other partners (the masks are its own: on CUDA drawn on the device from the member's own generator),
    so a --folds, resumed or full run trains a fold alike. Without the replay its weights moved by 2e-3 (EPIR) and
    0.9 (STSTNet) here. On CUDA with TF32 convolutions (cuDNN's default) STSTNet's weights agree only to TF32's
    rounding (1.7e-4 relative on an H200), so the test turns TF32 off."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model_cfg = ModelConfig(name=name, args=SMALL[name])
    recipe = replace(default_recipe(name), epochs=2, batch_size=8)
    ms = members()
    others = members(seed=5)
    trio, _ = fit_many(model_cfg, ms, recipe, num_classes=3, device=device)
    alone, _ = fit_many(model_cfg, ms[1:2], recipe, num_classes=3, device=device)
    swapped, _ = fit_many(model_cfg, [others[0], ms[1], others[2]], recipe, num_classes=3, device=device)
    for model in (alone[0], swapped[1]):
        for k, a in trio[1].state_dict().items():
            torch.testing.assert_close(model.state_dict()[k], a, atol=5e-4, rtol=1e-4, msg=lambda s, k=k: f"{k}: {s}")


def test_batched_training_replays_the_dropout_masks_of_the_global_generator() -> None:
    """layers.Dropout and DropPath draw what nn.Dropout and rand_like draw; draw() from a generator in the global
    generator's state gives the same masks, and a replayed pass uses exactly the draws it is given."""
    from epir.models.layers import Dropout, DropPath, draw, recorded_draws, replayed_draws

    x = torch.rand(5, 4, 3) + 1.0
    drop, path = Dropout(0.3).train(), DropPath(0.4).train()
    torch.manual_seed(3)
    state = torch.get_rng_state()
    want = path(drop(x))
    torch.manual_seed(3)
    assert torch.equal(path(torch.nn.Dropout(0.3).train()(x)), want)  # outside a replay: torch's own draws
    with recorded_draws() as calls:
        torch.testing.assert_close(path(drop(x)), x / 0.7 / 0.6)  # recording draws nothing: masks keep all
    assert [(c.kind, c.shape) for c in calls] == [("bernoulli", (4, 3)), ("uniform", (1, 1))]
    g = torch.Generator()
    g.set_state(state)
    draws = [draw(c, 5, g) for c in calls]
    with replayed_draws(draws):
        got = path(drop(x))
    torch.testing.assert_close(got, want)
    with pytest.raises(RuntimeError, match="took 1 random draws, not the 2"):
        with replayed_draws(draws):
            drop(x)
    with pytest.raises(RuntimeError, match="recorded as"):
        with replayed_draws([draws[0][:, :2]]):
            drop(x)


def test_models_that_draw_randomness_elsewhere_are_refused_batched(monkeypatch) -> None:
    """torch's own Dropout, or torch.rand in forward, cannot be drawn per member: a one-line error with the fix."""
    from epir.engine.batched import can_batch

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.2), torch.nn.Linear(3 * 28 * 28, 3))
    ok, why = can_batch(net)
    assert not ok and "epir.models.layers.Dropout" in why
    assert can_batch(torch.nn.Sequential(torch.nn.Dropout(0.0)))[0]  # p = 0 draws nothing

    class Noisy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3 * 28 * 28, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1) + (torch.rand_like(x.flatten(1)) if self.training else 0))

    monkeypatch.setattr(batched_mod, "build_model", lambda cfg: Noisy())
    with pytest.raises(ConfigError, match="draws random numbers in training"):
        fit_many(ModelConfig(name="ststnet"), members(sizes=(8, 8)),
                 replace(default_recipe("ststnet"), epochs=1, batch_size=8), num_classes=3)


def test_a_member_never_receives_another_members_rows(monkeypatch) -> None:
    """Spy on augmentation (the first thing a member's rows go through): every batch a member trains on holds
    only rows of its own training set."""
    ms = members(sizes=(12, 14))
    seen: list[torch.Tensor] = []
    real = batched_mod.augment

    def spy(x, cfg, gen):
        seen.append(x.clone())
        return real(x, cfg, gen)

    monkeypatch.setattr(batched_mod, "augment", spy)
    recipe = replace(default_recipe("ststnet"), epochs=2, batch_size=8)
    fit_many(ModelConfig(name="ststnet"), ms, recipe, num_classes=3)
    assert len(seen) == 2 * 2 * len(ms)  # epochs x steps x members, in member order within a step
    for i, batch in enumerate(seen):
        own = ms[i % len(ms)].x
        for row in batch:
            assert (own == row).flatten(1).all(1).any(), f"batch {i} holds a row of another member"


def test_members_with_different_step_counts_are_refused() -> None:
    recipe = replace(default_recipe("ststnet"), epochs=1, batch_size=8)
    with pytest.raises(ConfigError, match="steps per epoch"):
        fit_many(ModelConfig(name="ststnet"), members(sizes=(8, 20)), recipe, num_classes=3)


def test_fixed_orders_visit_the_rows_as_given_or_sorted_by_class_stably() -> None:
    """``train.order``: with ``shuffle=false`` every epoch visits the rows as given (``rows``) or sorted by label,
    ties in their given order (``by-class``, the official STSTNet code's folders 0, 1, 2)."""
    y = torch.tensor([2, 0, 1, 0, 2, 1, 0])
    g = torch.Generator().manual_seed(0)
    fixed = replace(default_recipe("ststnet"), shuffle=False)
    assert train_mod.epoch_order(y, fixed, g).tolist() == list(range(7))
    by_class = train_mod.epoch_order(y, replace(fixed, order="by-class"), g)
    assert by_class.tolist() == [1, 3, 6, 2, 5, 0, 4]
    assert y[by_class].tolist() == sorted(y.tolist())
    shuffled = train_mod.epoch_order(y, replace(fixed, shuffle=True), g)
    assert sorted(shuffled.tolist()) == list(range(7))


def test_the_order_switch_changes_the_batches_the_model_learns_from(one_torch_thread) -> None:
    """Same rows, seed and recipe: sorting by class changes what an unshuffled training ends with."""
    m = members(sizes=(24,))[0]
    recipe = replace(default_recipe("ststnet"), epochs=2, batch_size=8)
    weights = []
    for order in ("rows", "by-class"):
        model, _ = one_at_a_time(ModelConfig(name="ststnet"), m, replace(recipe, order=order))
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.allclose(weights[0], weights[1])


@pytest.mark.parametrize(("train", "message"), [
    ({"order": "random"}, "train.order='random': expected rows | by-class"),
    ({"order": "by-class"}, "train.order='by-class': expected rows while train.shuffle is true"),
])
def test_bad_orders_are_one_line_errors(train: dict, message: str) -> None:
    cfg = RunConfig.from_dict({"train": train})
    with pytest.raises(ConfigError, match=message.replace("|", r"\|")):
        check_ranges(cfg)


def test_masked_cross_entropy_equals_torch_on_the_valid_rows() -> None:
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(10, 3, generator=g), torch.randint(0, 3, (10,), generator=g)
    weight = torch.tensor([0.5, 2.0, 1.5])
    valid = torch.arange(10) < 7
    for smoothing in (0.0, 0.1):
        want = torch.nn.functional.cross_entropy(logits[:7], target[:7], weight=weight, label_smoothing=smoothing)
        got = masked_cross_entropy(logits, target, weight, smoothing, valid)
        torch.testing.assert_close(got, want)


def test_masked_supcon_ignores_padding() -> None:
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(9, 5, generator=g), torch.tensor([0, 1, 0, 1, 2, 2, 0, 1, 2])
    valid = torch.arange(9) < 6
    padded = supervised_contrastive_loss(torch.cat([z[:6], torch.randn(3, 5)]), y, 0.1, valid=valid)
    torch.testing.assert_close(padded, supervised_contrastive_loss(z[:6], y[:6], 0.1))


def tiny_run_cfg(**eval_kw) -> RunConfig:
    eval_kw.setdefault("threads", 1)
    return RunConfig(model=ModelConfig(name="ststnet"), data=DataConfig(dataset="megc2019"),
                     train=replace(default_recipe("ststnet"), epochs=2), eval=EvalConfig(**eval_kw))


def test_batched_and_one_at_a_time_runs_write_the_same_fold_file_layout(fake_dataset, tmp_path) -> None:
    a, b = tmp_path / "loop", tmp_path / "batched"
    run_loso(tiny_run_cfg(fold_batch=1), fake_dataset, a, progress=False)
    rb = run_loso(tiny_run_cfg(fold_batch=4), fake_dataset, b, progress=False)
    assert rb["fold_batch"] == 4
    files = sorted(p.relative_to(a) for p in (a / "folds").rglob("*.json"))
    assert files == sorted(p.relative_to(b) for p in (b / "folds").rglob("*.json"))
    for f in files:
        ra, rb_ = json.loads((a / f).read_text()), json.loads((b / f).read_text())
        assert set(ra) == set(rb_) and ra["indices"] == rb_["indices"] and ra["true"] == rb_["true"]


def test_interrupted_batched_run_resumes_from_its_finished_folds(fake_dataset, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    real = folds.run_fold_group
    monkeypatch.setattr(folds, "run_fold_group", interrupt_on_call(real, 2))
    with pytest.raises(KeyboardInterrupt):
        run_loso(tiny_run_cfg(fold_batch=2), fake_dataset, out, progress=False)
    finished = sorted((out / "folds" / "seed0").glob("*.json"))
    assert len(finished) == 2  # the first group of two folds
    before = {p.name: p.read_bytes() for p in finished}
    monkeypatch.setattr(folds, "run_fold_group", real)
    r = run_loso(tiny_run_cfg(fold_batch=2), fake_dataset, out, progress=False)
    assert r["resumed_folds"] == 2 and r["n_folds"] == 6
    assert {p.name: p.read_bytes() for p in finished} == before


def test_groups_hold_folds_of_equal_steps_and_respect_the_size(fake_dataset) -> None:
    cfg = tiny_run_cfg()
    todo = [(0, s) for s in fake_dataset.subject_list()] + [(1, s) for s in fake_dataset.subject_list()]
    groups = plan_groups(fake_dataset, cfg, todo, fold_batch=4)
    assert sorted(f for g in groups for f in g) == sorted(todo)
    assert max(len(g) for g in groups) <= 4
    counts = {s: fake_dataset.subjects.count(s) for s in fake_dataset.subject_list()}
    for g in groups:
        assert len({steps_per_epoch(len(fake_dataset) - counts[s], cfg.train.batch_size) for _, s in g}) == 1
    assert all(len(g) == 1 for g in plan_groups(fake_dataset, cfg, todo, fold_batch=1))


def test_groups_count_the_steps_of_the_drawn_share_of_subjects() -> None:
    """train.subject_fraction: a group's folds take the same number of steps on their drawn subjects' rows (subjects
    of unequal sizes), and a batched run of them trains."""
    from fakes import make_flow_dataset

    ds = make_flow_dataset({f"casme2/s{i:02d}": [i % 3] * (i + 1) for i in range(1, 8)})
    cfg = tiny_run_cfg(fold_batch=7)
    cfg = replace(cfg, train=replace(cfg.train, subject_fraction=0.5, batch_size=2, epochs=1))
    todo = [(0, s) for s in ds.subject_list()]
    groups = plan_groups(ds, cfg, todo, fold_batch=7)
    assert sorted(f for g in groups for f in g) == sorted(todo)
    for g in groups:
        assert len({steps_per_epoch(len(folds.fold_split(ds, s, 0.5, seed)[0]), 2) for seed, s in g}) == 1
    assert run_loso(cfg, ds, progress=False)["n_folds"] == 7


def test_groups_are_balanced_between_workers(fake_dataset) -> None:
    """12 folds, 4 at once, 2 workers: 4 groups of 3 (a multiple of the workers), not 4 + 4 + 4 on 3 groups."""
    cfg = tiny_run_cfg()
    todo = [(seed, s) for seed in (0, 1) for s in fake_dataset.subject_list()]
    groups = plan_groups(fake_dataset, cfg, todo, fold_batch=4, workers=2)
    assert sorted(f for g in groups for f in g) == sorted(todo)
    assert len(groups) % 2 == 0 and max(map(len, groups)) - min(map(len, groups)) <= 1 <= min(map(len, groups))


def test_fold_batch_defaults_and_fallback() -> None:
    cfg = tiny_run_cfg()
    assert resolve_fold_batch(cfg)[0] == 1  # STSTNet batched is slower on CPU (measured): one at a time there
    epir_cfg = replace(cfg, model=ModelConfig(name="epir"))
    assert resolve_fold_batch(epir_cfg)[0] == AUTO_FOLD_BATCH["cpu"] == 1  # the loop is faster on the CPU (round 10)
    assert resolve_fold_batch(cfg, fold_weights="w") == (1, "")  # published weights: nothing to train
    cuda = replace(epir_cfg, eval=replace(epir_cfg.eval, device="cuda"))
    assert resolve_fold_batch(cuda)[0] == AUTO_FOLD_BATCH["cuda"] > 1  # every fold at once on a GPU
    assert not batches_well("epir", "cpu") and batches_well("epir", "cuda") and not batches_well("htnet", "cuda")
    htnet = replace(cfg, model=ModelConfig(name="htnet"), eval=replace(cfg.eval, fold_batch=8))
    size, note = resolve_fold_batch(htnet)
    assert size == 1 and "not batchable" in note


def test_ensemble_probabilities_are_the_mean_of_the_members(fake_dataset, monkeypatch) -> None:
    """train.ensemble=K: K members per fold (own seeds, the fold's own first), probabilities averaged."""
    cfg = replace(tiny_run_cfg(fold_batch=1), train=replace(tiny_run_cfg().train, ensemble=3))
    subject = fake_dataset.subject_list()[0]
    seen: list[torch.Tensor] = []
    monkeypatch.setattr(folds, "predict_proba", record_returns(folds.predict_proba, seen))
    rec = folds.run_fold(fake_dataset, cfg, subject, seed=0)
    assert len(seen) == 3
    np.testing.assert_allclose(rec["probs"], torch.stack(seen).mean(0).numpy(), atol=1e-6)
    single = folds.run_fold(fake_dataset, tiny_run_cfg(fold_batch=1), subject, seed=0)
    np.testing.assert_allclose(single["probs"], seen[0].numpy(), atol=1e-6)  # member 0 is the plain fold


def test_snapshot_epochs_spread_over_the_second_half() -> None:
    assert snapshot_epochs(40, 4) == [24, 29, 34]  # the ends of epochs 25, 30, 35 (1-based), beside the final 40
    assert snapshot_epochs(40, 1) == [] and snapshot_epochs(10, 5) == [5, 6, 7, 8]
    with pytest.raises(ConfigError, match="train.snapshots"):
        check_ranges(replace(tiny_run_cfg(), train=replace(tiny_run_cfg().train, snapshots=3)))  # 2 epochs: at most 1


@pytest.mark.parametrize("fold_batch", [1, 2])
def test_snapshot_probabilities_are_the_mean_over_the_snapshot_epochs(fake_dataset, monkeypatch,
                                                                      fold_batch: int) -> None:
    """train.snapshots=K: each fold's probabilities are the mean of K predictions of its held-out rows, the
    final weights' and those at the fixed snapshot epochs, batched or not."""
    cfg = tiny_run_cfg(fold_batch=fold_batch)
    cfg = replace(cfg, train=replace(cfg.train, epochs=6, snapshots=3))
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy(real):
        def wrapped(model, norm, x, **kw):
            out = real(model, norm, x, **kw)
            calls.append((x, out))
            return out
        return wrapped

    monkeypatch.setattr(folds, "predict_proba", spy(folds.predict_proba))
    monkeypatch.setattr(train_mod, "predict_proba", spy(train_mod.predict_proba))
    epochs_seen: list[int] = []
    real_update = train_mod.SnapshotMean.update
    monkeypatch.setattr(train_mod.SnapshotMean, "update",
                        lambda self, e, m, n: (epochs_seen.append(e) if e in self.epochs else None,
                                               real_update(self, e, m, n))[1])
    subjects = fake_dataset.subject_list()[:2]
    records = folds.run_fold_group(fake_dataset, cfg, [(0, s) for s in subjects])
    assert sorted(set(epochs_seen)) == snapshot_epochs(6, 3) == [3, 4]
    for rec in records:
        x = fake_dataset.x[rec["indices"]]
        mine = [p for xs, p in calls if xs.shape == x.shape and torch.equal(xs, x)]
        assert len(mine) == 3  # two snapshot epochs and the final weights
        np.testing.assert_allclose(rec["probs"], torch.stack(mine).mean(0).numpy(), atol=1e-6)


def test_params_total_counts_every_member_and_snapshot(fake_dataset, tmp_path) -> None:
    """results.json reports one model's parameters and the whole that predicts a fold (members x snapshots)."""
    cfg = tiny_run_cfg(folds=(fake_dataset.subject_list()[0],))
    cfg = replace(cfg, train=replace(cfg.train, epochs=4, ensemble=2, snapshots=2))
    r = run_loso(cfg, fake_dataset, tmp_path / "run", progress=False)
    assert r["params"] == 1683 and r["params_total"] == 4 * r["params"]  # STSTNet: 2 members x 2 snapshots
    assert r["flops_total"] == 4 * r["flops_per_sample"] * forward_passes(cfg.train)  # each of them predicts


def test_snapshots_exclude_the_oracle_and_checkpoints(fake_dataset, tmp_path) -> None:
    cfg = tiny_run_cfg(oracle_epoch=True)
    cfg = replace(cfg, train=replace(cfg.train, epochs=4, snapshots=2))
    with pytest.raises(ConfigError, match="train.snapshots=2.*eval.oracle_epoch"):
        run_loso(cfg, fake_dataset, tmp_path / "run", progress=False)
    from epir.inference import train_checkpoint

    with pytest.raises(ConfigError, match="train.snapshots=2: a checkpoint holds one model"):
        train_checkpoint(replace(cfg, eval=replace(cfg.eval, oracle_epoch=False)), tmp_path / "ckpt",
                         dataset=fake_dataset, progress=False)


def test_cpu_default_uses_every_core(monkeypatch) -> None:
    from epir.cli import make_parser
    from epir.runsetup import config_from_args as build_config

    args = make_parser().parse_args(["loso", "--model", "epir"])
    assert build_config(args).eval.jobs == -1  # one worker process per core
    args = make_parser().parse_args(["loso", "--model", "epir", "--threads", "2"])
    assert build_config(args).eval.jobs == 1  # --threads alone: this process, that many threads


# ------------------------------------------------------------------------------ selection inside the fold


def select_cfg(**eval_kw) -> RunConfig:
    cfg = tiny_run_cfg(**eval_kw)
    return replace(cfg, train=replace(cfg.train, epochs=1, select=("", "train.epochs=2"), select_k=2))


@pytest.mark.parametrize("fold_batch", [1, 4])
def test_inner_selection_never_sees_the_held_out_subject(fake_dataset, monkeypatch, fold_batch: int) -> None:
    """Spy on every training call of the selection: no held-out row ever reaches one; each fold records its
    candidates, inner scores and choice."""
    trained = spy_on_selection_training(monkeypatch)
    subject = fake_dataset.subject_list()[1]
    held_out = fake_dataset.x[torch.tensor([s == subject for s in fake_dataset.subjects])]
    cfg = replace(select_cfg(fold_batch=fold_batch), eval=replace(select_cfg().eval, folds=(subject,),
                                                                   fold_batch=fold_batch))
    r = run_loso(cfg, fake_dataset, progress=False)
    assert trained, "selection trained nothing"
    for x in trained:
        for row in held_out:
            assert not (x == row).flatten(1).all(1).any(), "a held-out row reached inner selection"
    assert r["selection"]["candidates"] == ["", "train.epochs=2"]
    assert sum(r["selection"]["chosen_counts"].values()) == 1


def test_selection_record_in_fold_file(fake_dataset, tmp_path) -> None:
    out = tmp_path / "run"
    cfg = select_cfg(fold_batch=1)
    cfg = replace(cfg, eval=replace(cfg.eval, folds=(fake_dataset.subject_list()[0],)))
    run_loso(cfg, fake_dataset, out, progress=False)
    rec = json.loads(next((out / "folds" / "seed0").glob("*.json")).read_text())
    sel = rec["selection"]
    assert sel["candidates"] == ["", "train.epochs=2"] and sel["select_k"] == 2
    assert len(sel["scores"]) == 2 and sel["chosen"] == int(np.argmax(sel["scores"]))


def test_bad_candidates_are_refused_before_training(fake_dataset) -> None:
    cfg = tiny_run_cfg()
    for bad in (("eval.seeds=[1]",), ("train.select=[x]",), ("train.nosuch=1",)):
        with pytest.raises(ConfigError):
            run_loso(replace(cfg, train=replace(cfg.train, select=bad)), fake_dataset, progress=False)
    with pytest.raises(ConfigError, match="exclude each other"):
        run_loso(replace(cfg, train=replace(cfg.train, select=("",)), eval=replace(cfg.eval, oracle_epoch=True)),
                 fake_dataset, progress=False)


# ------------------------------------------------------------------------------ distillation


@pytest.mark.parametrize("fold_batch", [1, 4])
def test_teacher_is_trained_on_the_training_rows_only(fake_dataset, monkeypatch, fold_batch: int) -> None:
    """train.distill: a teacher per fold, trained before the student on the fold's training rows alone."""
    from epir.engine import selection

    seen: list[tuple[str, torch.Tensor]] = []
    real = selection.train_models

    def spy(model_cfg, recipe, jobs, **kw):
        seen.extend((model_cfg.name, x.clone()) for x, *_ in jobs)
        return real(model_cfg, recipe, jobs, **kw)

    monkeypatch.setattr(selection, "train_models", spy)
    monkeypatch.setattr(folds, "train_models", spy)
    cfg = RunConfig(model=ModelConfig(name="epir", args={"dim": 16, "heads": 2, "depths": [1, 1]}),
                    data=DataConfig(dataset="megc2019"),
                    train=replace(default_recipe("epir", "alone"), epochs=1, distill="ststnet",
                                  distill_overrides=("train.epochs=1",)),
                    eval=EvalConfig(threads=1, fold_batch=fold_batch, folds=tuple(fake_dataset.subject_list()[:2])))
    r = run_loso(cfg, fake_dataset, progress=False)
    assert r["n_folds"] == 2
    teachers = [x for name, x in seen if name == "ststnet"]
    assert len(teachers) == 2
    for subject, x in zip(fake_dataset.subject_list()[:2], teachers):
        held_out = fake_dataset.x[torch.tensor([s == subject for s in fake_dataset.subjects])]
        for row in held_out:
            assert not (x == row).flatten(1).all(1).any(), "a held-out row reached the teacher"


@pytest.mark.parametrize("fold_batch", [1, 4])
def test_distill_mix_blends_the_teachers_own_probabilities(fake_dataset, tmp_path, fold_batch: int) -> None:
    """train.distill_mix = m: the fold's probabilities are (1 - m) student + m teacher; the fold files keep the
    teacher's own held-out probabilities and results.json its scores and parameters (in the total when it predicts)."""
    def run(mix: float, out: str) -> dict:
        cfg = RunConfig(model=ModelConfig(name="epir", args={"dim": 16, "heads": 2, "depths": [1, 1]}),
                        data=DataConfig(dataset="megc2019"),
                        train=replace(default_recipe("epir", "alone"), epochs=1, distill="ststnet", distill_weight=0.0,
                                      distill_overrides=("train.epochs=1",), distill_mix=mix),
                        eval=EvalConfig(threads=1, fold_batch=fold_batch, report=False,
                                        folds=tuple(fake_dataset.subject_list()[:2])))
        return run_loso(cfg, fake_dataset, out_dir=tmp_path / out, progress=False)

    plain, mixed = run(0.0, "plain"), run(0.25, "mixed")
    for f in sorted((tmp_path / "plain" / "folds").rglob("*.json")):
        a = json.loads(f.read_text())
        b = json.loads((tmp_path / "mixed" / f.relative_to(tmp_path / "plain")).read_text())
        teacher = torch.tensor(a["teacher_probs"])
        torch.testing.assert_close(torch.tensor(b["teacher_probs"]), teacher)
        torch.testing.assert_close(torch.tensor(b["probs"]), 0.75 * torch.tensor(a["probs"]) + 0.25 * teacher)
    assert plain["teacher"]["model"] == "ststnet" and 0 <= plain["teacher"]["uf1"] <= 1
    assert mixed["params_total"] == plain["params_total"] + plain["teacher"]["params"]
    # the parts of the blend: the student's own probabilities are kept, and what it and its teacher score alone
    for f in sorted((tmp_path / "mixed" / "folds").rglob("*.json")):
        b = json.loads(f.read_text())
        a = json.loads((tmp_path / "plain" / f.relative_to(tmp_path / "mixed")).read_text())
        assert "model_probs" not in a and b["model_probs"] == a["probs"]
    assert "model_alone" not in plain
    assert mixed["model_alone"] == {k: plain[k] for k in ("uf1", "uf1_std", "uar", "uar_std")}
    assert f"parts (mean over seeds): model alone UF1 {plain['uf1']:.4f}" in format_summary(mixed)
    with pytest.raises(ConfigError, match="train.distill_mix=0.5: expected 0 without a teacher"):
        check_ranges(RunConfig(train=replace(default_recipe("epir", "alone"), distill_mix=0.5)))


# ------------------------------------------------------------------------------ the distillation token (DeiT)


def test_hard_distillation_is_the_cross_entropy_with_the_teachers_class() -> None:
    g = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    valid = torch.tensor([True, True, False, True, False])
    target = teacher.argmax(-1)
    torch.testing.assert_close(train_mod.hard_distillation_loss(logits, teacher), F.cross_entropy(logits, target))
    torch.testing.assert_close(train_mod.hard_distillation_loss(logits, teacher, valid),
                               F.cross_entropy(logits[valid], target[valid]))
    cfg = replace(default_recipe("epir", "alone"), distill_target="hard")
    torch.testing.assert_close(train_mod.teacher_loss(logits, teacher, cfg), F.cross_entropy(logits, target))
    soft = replace(cfg, distill_target="soft", distill_temperature=3.0)
    torch.testing.assert_close(train_mod.teacher_loss(logits, teacher, soft),
                               train_mod.distillation_loss(logits, teacher, 3.0))


def token_recipe(**kw):
    return replace(default_recipe("epir", "alone"), **{"epochs": 2, "batch_size": 8, "distill": "ststnet",
                                                        "distill_weight": 0.5, "distill_target": "hard", **kw})


def fixed_teacher() -> train_mod.Teacher:
    """An untrained STSTNet with the standardisation of random maps: a teacher whose classes are not the labels."""
    torch.manual_seed(5)
    teacher = build_model(ModelConfig(name="ststnet")).eval()
    return teacher, train_mod.InputNorm.fit("standardize", torch.rand(32, 3, 28, 28) * 255)


def test_the_teacher_teaches_the_distillation_head_and_only_it(monkeypatch) -> None:
    """One at a time: every teacher term is computed on the distillation head's logits of that step, with the
    teacher's logits of the same (augmented) batch, and none on the class head's."""
    heads: list[torch.Tensor] = []
    terms: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = train_mod.teacher_loss

    def spy(logits, teacher_logits, cfg, valid=None):
        terms.append((logits, teacher_logits))
        return real(logits, teacher_logits, cfg, valid)

    monkeypatch.setattr(train_mod, "teacher_loss", spy)
    m = members()[0]
    torch.manual_seed(m.seed)
    model = build_model(ModelConfig(name="epir", args={**SMALL["epir"], "distill_token": True}))
    model.head_dist.register_forward_hook(lambda mod, args, out: heads.append(out))
    fit(model, m.x, m.y, token_recipe(), seed=m.seed, num_classes=3, teacher=fixed_teacher())
    assert len(terms) == len(heads) == 2 * steps_per_epoch(len(m.x), 8)
    assert all(logits is head for (logits, _), head in zip(terms, heads))


def test_a_distillation_token_trains_batched_as_one_at_a_time(one_torch_thread) -> None:
    model_cfg = ModelConfig(name="epir", args={**SMALL["epir"], "distill_token": True})
    recipe, teacher, ms = token_recipe(), fixed_teacher(), members()
    models, norms = fit_many(model_cfg, ms, recipe, num_classes=3, teachers=[teacher] * len(ms))
    probe = torch.rand(6, 3, 28, 28, generator=torch.Generator().manual_seed(9)) * 255
    for m, model, norm in zip(ms, models, norms):
        torch.manual_seed(m.seed)
        ref = build_model(model_cfg)
        ref_norm = fit(ref, m.x, m.y, recipe, seed=m.seed, num_classes=3, teacher=teacher)
        torch.testing.assert_close(predict_proba(model, norm, probe), predict_proba(ref, ref_norm, probe),
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("switch", [{"merge_metric": "keys"}, {"refine_transform": "affine"},
                                    {"shifts": "none", "patch_overlap": 2}, {"dnspt": False, "patch_overlap": 1},
                                    {"flow_magnitude": True}],
                         ids=["merge_metric=keys", "refine_transform=affine", "shifts=none,patch_overlap=2",
                              "dnspt=false,patch_overlap=1", "flow_magnitude"])
def test_an_architecture_switch_trains_batched_as_one_at_a_time(one_torch_thread, switch: dict) -> None:
    """model.merge_metric=keys takes the keys from the stacked weights inside vmap, model.refine_transform=affine
    resamples each member's maps through its own matrices, model.patch_overlap cuts overlapping windows (unfold)
    and model.flow_magnitude takes each map's median (a sort) inside vmap: the loop's predictions either way."""
    model_cfg = ModelConfig(name="epir", args={**SMALL["epir"], **switch})
    recipe, ms = replace(default_recipe("epir"), epochs=2, batch_size=8), members()
    models, norms = fit_many(model_cfg, ms, recipe, num_classes=3)
    probe = torch.rand(6, 3, 28, 28, generator=torch.Generator().manual_seed(9)) * 255
    for m, model, norm in zip(ms, models, norms):
        ref, ref_norm = one_at_a_time(model_cfg, m, recipe)
        torch.testing.assert_close(predict_proba(model, norm, probe), predict_proba(ref, ref_norm, probe),
                                   atol=1e-4, rtol=1e-4)


def test_a_distillation_token_without_a_teacher_is_refused_before_training(fake_dataset) -> None:
    from epir import make_config
    from epir.engine.loso import check_before_training
    from epir.runsetup import resolve_config

    message = "model.distill_token=true: the distillation token learns from a teacher's predictions"
    token = "model.distill_token=true"
    for overrides in ([token], [token, "train.distill=ststnet", "train.distill_weight=0"],
                      [token, "train.distill=ststnet", "train.select=['', train.distill_weight=0]"]):
        with pytest.raises(ConfigError, match=message):
            check_before_training(resolve_config(make_config("epir", "megc2019", recipe="alone", overrides=overrides)))
    check_before_training(resolve_config(make_config("epir", "megc2019", recipe="alone",
                                                     overrides=[token, "train.distill=ststnet"])))
    m = members()[0]
    with pytest.raises(ConfigError, match=r"model.distill_token=true \(m0\): .* this training has none"):
        fit(build_model(ModelConfig(name="epir", args={**SMALL["epir"], "distill_token": True})), m.x, m.y,
            token_recipe(distill_weight=0.0), seed=0, num_classes=3, describe="m0", teacher=fixed_teacher())
    with pytest.raises(ConfigError, match="train.distill_target='firm': expected soft | hard"):
        check_ranges(RunConfig(train=replace(default_recipe("epir", "alone"), distill_target="firm")))


def test_teacher_mix_recipe_is_the_ablation_lever() -> None:
    """``--recipe teacher-mix`` is EPIR alone plus the teacher-mix lever's overrides; the default recipe is the
    weight chosen on shared groups, and the ablation's two levers take it back to the fixed mix and to EPIR alone."""
    from epir.engine.ablate import LEVERS, lever_arm
    from epir.runsetup import make_config, resolve_config

    named = make_config("epir", recipe="teacher-mix")
    alone = make_config("epir", recipe="alone")
    lever = make_config("epir", recipe="alone", overrides=list(LEVERS["teacher-mix"]))
    assert named.train == lever.train and named.train.distill_mix == 0.5
    default = make_config("epir")
    assert default.train == make_config("epir", recipe="teacher3-mix-grouped").train  # round 7's default
    round6 = make_config("epir", recipe="teacher-mix-shared")
    three = replace(named.train, distill_members=3)  # the fixed 0.5 with the default's ensemble teacher
    for name, arm, expected in (("teacher-mix", "-teacher-mix", alone.train), ("mix-select", "-mix-select", three)):
        got_arm, got = lever_arm(default, name)
        assert got_arm == arm and resolve_config(got).train == resolve_config(replace(default, train=expected)).train
    assert resolve_config(lever_arm(alone, "mix-select")[1]) == resolve_config(round6)
    check_ranges(named)
    chosen = make_config("epir", recipe="teacher-mix-select")  # the weight chosen inside the fold instead
    assert chosen.train.select == ("train.distill_mix=0", "train.distill_mix=0.25", "train.distill_mix=0.5",
                                   "train.distill_mix=0.75", "train.distill_mix=1")
    assert replace(chosen.train, select=(), distill_mix=0.5) == named.train
    check_ranges(chosen)
    shared = make_config("epir", recipe="teacher-mix-shared")  # the same choice on groups shared by the folds
    assert shared.train.select_shared == 6 and replace(shared.train, select_shared=0) == chosen.train
    check_ranges(shared)


def test_distill_mix_can_be_chosen_inside_the_fold(fake_dataset) -> None:
    """A train.select candidate may set train.distill_mix: its inner predictions blend its inner teachers'."""
    cfg = RunConfig(model=ModelConfig(name="epir", args={"dim": 16, "heads": 2, "depths": [1, 1]}),
                    data=DataConfig(dataset="megc2019"),
                    train=replace(default_recipe("epir", "alone"), epochs=1, distill="ststnet", distill_weight=0.0,
                                  distill_overrides=("train.epochs=1",), select=("", "train.distill_mix=1")),
                    eval=EvalConfig(threads=1, report=False, folds=tuple(fake_dataset.subject_list()[:1])))
    r = run_loso(cfg, fake_dataset, progress=False)
    assert sum(r["selection"]["chosen_counts"].values()) == 1
    # a candidate lets the teacher predict: the whole counts it, and the weight is marked as chosen per fold
    assert r["teacher"]["mix_chosen_in_fold"] and r["params_total"] == r["params"] + r["teacher"]["params"]
    assert r["teacher"]["mix_counts"] == {"0.0": 1 - r["selection"]["chosen_counts"]["train.distill_mix=1"],
                                          "1.0": r["selection"]["chosen_counts"]["train.distill_mix=1"]}


def test_candidates_differing_in_distill_mix_share_their_inner_models(fake_dataset, monkeypatch) -> None:
    """Choosing the teacher's weight costs one set of inner trainings (student and teacher per group), and each
    candidate's inner predictions are its blend of those models' probabilities."""
    from epir.engine import selection

    calls: list[str] = []
    real = selection.train_models

    def spy(model_cfg, recipe, jobs, **kw):
        calls.extend(model_cfg.name for _ in jobs)
        return real(model_cfg, recipe, jobs, **kw)

    monkeypatch.setattr(selection, "train_models", spy)
    cfg = RunConfig(model=ModelConfig(name="epir", args={"dim": 16, "heads": 2, "depths": [1, 1]}),
                    data=DataConfig(dataset="megc2019"),
                    train=replace(default_recipe("epir", "alone"), epochs=1, distill="ststnet", distill_weight=0.0,
                                  distill_overrides=("train.epochs=1",), select_k=2,
                                  select=("train.distill_mix=0", "train.distill_mix=0.5", "train.distill_mix=1")))
    train_idx = np.flatnonzero(np.asarray(fake_dataset.subjects) != fake_dataset.subject_list()[0])
    chosen, info = selection.select_in_fold(fake_dataset, cfg, train_idx, 0)
    assert calls.count("ststnet") == 2 and calls.count("epir") == 2  # one teacher and one student per group
    assert len(info["scores"]) == 3 and chosen.train.distill_mix == [0.0, 0.5, 1.0][info["chosen"]]


def test_distillation_loss_is_zero_for_identical_logits_and_masks_padding() -> None:
    from epir.engine.train import distillation_loss

    logits = torch.randn(5, 3)
    assert distillation_loss(logits, logits, 2.0).abs() < 1e-6
    other = torch.randn(5, 3)
    valid = torch.arange(5) < 3
    torch.testing.assert_close(distillation_loss(logits, other, 2.0, valid),
                               distillation_loss(logits[:3], other[:3], 2.0))


# ------------------------------------------------------------------------------ test-time augmentation


def test_flip_tta_is_the_mean_of_the_map_and_its_mirror() -> None:
    """train.tta=flip: the probabilities are the mean of the map's and its mirror's (u reversed: 255 - u)."""
    from epir.data.augment import mirror_maps
    from epir.engine.train import InputNorm

    torch.manual_seed(0)
    model = build_model(ModelConfig(name="ststnet")).eval()
    norm = InputNorm.fit("scale", torch.zeros(1, 3, 28, 28))
    x = torch.rand(5, 3, 28, 28) * 255
    mirrored = mirror_maps(x)
    assert torch.equal(mirrored[:, 1:], x[:, 1:].flip(-1))  # v and strain only move with the pixels
    assert torch.allclose(mirrored[:, 0], 255 - x[:, 0].flip(-1))  # horizontal motion reverses
    assert torch.allclose(mirror_maps(mirrored), x, atol=1e-4)
    plain = predict_proba(model, norm, x)
    both = predict_proba(model, norm, x, tta="flip")
    np.testing.assert_allclose(both.numpy(), ((plain + predict_proba(model, norm, mirrored)) / 2).numpy(), atol=1e-6)
    with pytest.raises(ConfigError, match="train.tta"):
        predict_proba(model, norm, x, tta="rotate")


@pytest.mark.parametrize("fold_batch", [1, 4])
def test_flip_tta_reaches_every_fold_path(fake_dataset, monkeypatch, fold_batch: int) -> None:
    """The recipe's train.tta is what the fold's predictions use, batched or not."""
    cfg = tiny_run_cfg(fold_batch=fold_batch)
    cfg = replace(cfg, train=replace(cfg.train, tta="flip"))
    seen: list[str] = []
    real = folds.predict_proba

    def spy(*args, **kwargs):
        seen.append(kwargs.get("tta", "none"))
        return real(*args, **kwargs)

    monkeypatch.setattr(folds, "predict_proba", spy)
    subjects = fake_dataset.subject_list()[:2]
    if fold_batch == 1:
        folds.run_fold(fake_dataset, cfg, subjects[0], seed=0)
    else:
        folds.run_fold_group(fake_dataset, cfg, [(0, s) for s in subjects])
    assert seen and set(seen) == {"flip"}


@pytest.mark.parametrize("device", DEVICES)
def test_an_epir_folds_predictions_do_not_depend_on_the_run_plan(fake_dataset, tmp_path, device: str) -> None:
    """Dropout and stochastic depth on: a fold's probabilities are the same in a full batched run and in a run of
    that fold alone (``--folds``; on CUDA a group of one trains batched too), so resumed and partial runs reproduce
    the full run; on CPU also one at a time (the loop's CUDA dropout draws from another stream than the batched
    masks, so there it differs like a seed)."""
    from epir.models.epir import EPIR_RECIPE

    train = replace(EPIR_RECIPE, epochs=2)
    cfg = RunConfig(model=ModelConfig(name="epir", args=SMALL["epir"]), data=DataConfig(dataset="megc2019"),
                    train=train, eval=EvalConfig(threads=1, fold_batch=6, device=device))
    subject = fake_dataset.subject_list()[3]

    def probs(c: RunConfig, out: str) -> list[list[float]]:
        run_loso(c, fake_dataset, tmp_path / out, progress=False)
        rec = next(json.loads(p.read_text()) for p in (tmp_path / out / "folds" / "seed0").glob("*.json")
                   if json.loads(p.read_text())["subject"] == subject)
        return rec["probs"]

    full = torch.tensor(probs(cfg, "full"))
    alone = torch.tensor(probs(replace(cfg, eval=replace(cfg.eval, folds=(subject,))), "alone"))
    loop = torch.tensor(probs(replace(cfg, eval=replace(cfg.eval, fold_batch=1)), "loop"))
    torch.testing.assert_close(alone, full, atol=1e-4, rtol=1e-4)
    if device == "cpu":
        torch.testing.assert_close(loop, full, atol=1e-4, rtol=1e-4)
    else:
        assert torch.isfinite(loop).all() and torch.allclose(loop.sum(1), torch.ones(len(loop)))
