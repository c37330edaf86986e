"""train.distill_members: an ensemble teacher (K seeds of the teacher's recipe on the fold's rows, probabilities
averaged), in LOSO, in selection and in checkpoints."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import epir
from epir.config import DataConfig, EvalConfig, ModelConfig, RunConfig, check_ranges
from epir.data import load_dataset
from epir.engine import folds, selection
from epir.engine.cost import forward_passes
from epir.engine.loso import run_loso
from epir.errors import ConfigError
from epir.inference import CheckpointError, load_checkpoint, train_checkpoint
from epir.models import ProbabilityMean, create_model, default_recipe
from epir.profiling import count_flops

TINY_EPIR = ["model.dim=16", "model.heads=2", "model.depths=[1,1]"]


def test_probability_mean_is_the_mean_of_its_members_probabilities() -> None:
    torch.manual_seed(0)
    members = [create_model("ststnet").eval() for _ in range(3)]
    x = torch.rand(5, 3, 28, 28) * 255
    with torch.no_grad():
        expected = torch.stack([m(x).softmax(-1) for m in members]).mean(0)
        got = ProbabilityMean(members)(x).softmax(-1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="at least one member"):
        ProbabilityMean([])


def _cfg(members: int, mix: float, subjects: list[str], fold_batch: int = 4) -> RunConfig:
    return RunConfig(model=ModelConfig(name="epir", args={"dim": 16, "heads": 2, "depths": [1, 1]}),
                     data=DataConfig(dataset="megc2019"),
                     train=replace(default_recipe("epir", "alone"), epochs=1, distill="ststnet", distill_weight=0.0,
                                   distill_overrides=("train.epochs=1",), distill_mix=mix, distill_members=members),
                     eval=EvalConfig(threads=1, fold_batch=fold_batch, report=False, folds=tuple(subjects)))


@pytest.mark.parametrize("fold_batch", [1, 4])
def test_ensemble_teacher_trains_k_seeds_on_the_training_rows_only(fake_dataset, monkeypatch, tmp_path,
                                                                   fold_batch: int) -> None:
    """K teacher jobs per fold, distinct seeds, the fold's training rows alone; the fold's teacher probabilities
    are their mean, mixed in with train.distill_mix; results.json counts every member's parameters."""
    seen: list[tuple[str, int, torch.Tensor]] = []
    trained: list[torch.nn.Module] = []
    real = selection.train_models

    def spy(model_cfg, recipe, jobs, **kw):
        seen.extend((model_cfg.name, seed, x.clone()) for x, _, seed, _ in jobs)
        models, norms = real(model_cfg, recipe, jobs, **kw)
        if model_cfg.name == "ststnet":
            trained.extend(models)
        return models, norms

    monkeypatch.setattr(selection, "train_models", spy)
    monkeypatch.setattr(folds, "train_models", spy)
    subjects = fake_dataset.subject_list()[:2]
    r = run_loso(_cfg(3, 0.5, subjects, fold_batch), fake_dataset, out_dir=tmp_path / "run", progress=False)
    teachers = [(seed, x) for name, seed, x in seen if name == "ststnet"]
    assert len(teachers) == 6
    for f, subject in enumerate(subjects):
        jobs = teachers[3 * f:3 * f + 3]
        assert len({seed for seed, _ in jobs}) == 3  # three seeds, not three copies
        held_out = fake_dataset.x[torch.tensor([s == subject for s in fake_dataset.subjects])]
        for _, x in jobs:
            for row in held_out:
                assert not (x == row).flatten(1).all(1).any(), "a held-out row reached a teacher member"
    assert r["teacher"]["members"] == 3
    single = create_model("ststnet")
    assert r["teacher"]["params"] == 3 * sum(p.numel() for p in single.parameters())
    assert r["params_total"] == r["params"] + r["teacher"]["params"]
    # one whole prediction: the student's forward passes and each of the three teachers' own
    cfg = _cfg(3, 0.5, subjects, fold_batch)
    teacher_flops = forward_passes(selection.teacher_config(cfg).train) * count_flops(single, (1, 3, 28, 28))
    assert r["flops_total"] == forward_passes(cfg.train) * r["flops_per_sample"] + 3 * teacher_flops
    first = trained[0].state_dict()
    assert any(not torch.equal(first[k], trained[1].state_dict()[k]) for k in first)
    for f in sorted((tmp_path / "run" / "folds").rglob("*.json")):
        rec = json.loads(f.read_text())
        p = torch.tensor(rec["teacher_probs"])
        torch.testing.assert_close(p.sum(-1), torch.ones(len(p)), rtol=0, atol=1e-5)


def test_one_member_is_the_single_teacher_of_before(fake_dataset) -> None:
    """distill_members=1 returns the bare network (no wrapper); K > 1 a ProbabilityMean whose first member has the
    single teacher's seed."""
    rows = [(torch.arange(8).numpy(), 123, "fold")]
    one = selection.train_teachers(fake_dataset, _cfg(1, 0.5, []), rows, batched=False)
    three = selection.train_teachers(fake_dataset, _cfg(3, 0.5, []), rows, batched=False)
    assert one is not None and three is not None
    assert not isinstance(one[0][0], ProbabilityMean)
    assert isinstance(three[0][0], ProbabilityMean) and len(three[0][0].members) == 3
    a, b = one[0][0].state_dict(), three[0][0].members[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # unbatched training: the same seed gives the same weights
    torch.testing.assert_close(one[0][1].mean, three[0][1].mean)


def test_distill_members_is_range_checked() -> None:
    for bad in (0, 65):
        with pytest.raises(ConfigError, match="train.distill_members"):
            check_ranges(RunConfig(train=replace(default_recipe("epir", "alone"), distill="ststnet",
                                                 distill_members=bad)))


def test_teacher3_recipe_is_the_default_with_three_teacher_seeds() -> None:
    default = epir.make_config("epir", recipe="teacher-mix-shared")
    three = epir.make_config("epir", recipe="teacher3-mix-shared")
    assert three.train == replace(default.train, distill_members=3)
    from epir.engine.ablate import lever_arm
    from epir.runsetup import resolve_config

    arm, on = lever_arm(default, "teacher-ensemble")
    assert arm == "+teacher-ensemble" and resolve_config(on) == resolve_config(three)
    arm, off = lever_arm(three, "teacher-ensemble")
    assert arm == "-teacher-ensemble" and resolve_config(off) == resolve_config(default)
    arm, alone = lever_arm(three, "teacher-mix")  # taking the teacher away takes all its members
    assert arm == "-teacher-mix" and resolve_config(alone) == resolve_config(epir.make_config("epir", recipe="alone"))
    with pytest.raises(ConfigError, match="train.distill_members=3: expected 1 without a teacher"):
        check_ranges(RunConfig(train=replace(default_recipe("epir", "alone"), distill_members=3)))


@pytest.fixture(scope="module")
def ensemble_checkpoint(tmp_path_factory):
    data = load_dataset("synthetic", n_subjects=3, clips_per_subject=4, seed=0)
    cfg = epir.make_config("epir", "synthetic", recipe="teacher-mix",
                           overrides=["train.epochs=2", *TINY_EPIR, "train.distill_overrides=[train.epochs=1]",
                                      "train.distill_members=2"])
    return train_checkpoint(cfg, tmp_path_factory.mktemp("ens") / "ck", dataset=data, progress=False), data


def test_ensemble_teacher_checkpoint_round_trips_and_predicts_the_blend(ensemble_checkpoint) -> None:
    from epir.engine.selection import mix_teacher, teacher_proba
    from epir.engine.train import predict_proba

    ckpt, data = ensemble_checkpoint
    meta = json.loads((ckpt.path / "checkpoint.json").read_text())
    assert meta["teacher"]["members"] == 2
    loaded = load_checkpoint(ckpt.path)
    assert isinstance(loaded.teacher[0], ProbabilityMean) and len(loaded.teacher[0].members) == 2
    assert loaded.info.teacher is not None and loaded.info.teacher.members == 2
    cfg = epir.RunConfig.from_dict(meta["training"]["config"])
    with torch.inference_mode():
        student = predict_proba(loaded.model, loaded.norm, data.x, tta=cfg.train.tta)
        expected = mix_teacher(cfg, student, teacher_proba(cfg, loaded.teacher, data.x))
        got = loaded.inference_model()(data.x).softmax(-1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("members, message", [
    (0, "teacher.members must be an integer from 1 to 64"),
    ("2", "teacher.members must be an integer from 1 to 64"),
    (3, "unexpected tensors|missing tensors"),
])
def test_a_wrong_member_count_is_a_clear_error(ensemble_checkpoint, tmp_path: Path, members, message: str) -> None:
    ckpt, _ = ensemble_checkpoint
    d = tmp_path / "ck"
    d.mkdir()
    for f in ckpt.path.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    meta = json.loads((d / "checkpoint.json").read_text())
    meta["teacher"]["members"] = members
    (d / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(d)


def grouped_cfg(subjects: tuple[str, ...], fold_batch: int = 4, members: int = 2) -> RunConfig:
    return RunConfig(model=ModelConfig(name="epir", args={"dim": 16, "heads": 2, "depths": [1, 1]}),
                     data=DataConfig(dataset="megc2019"),
                     train=replace(default_recipe("epir", "alone"), epochs=1, distill="ststnet", distill_weight=0.0,
                                   distill_overrides=("train.epochs=1",), distill_mix=0.5, distill_members=members,
                                   distill_shared=True, select=("train.distill_mix=0.5", "train.distill_mix=1"),
                                   select_shared=3),
                     eval=EvalConfig(threads=1, fold_batch=fold_batch, report=False, folds=subjects))


@pytest.mark.parametrize("fold_batch", [1, 4])
def test_group_teachers_never_see_the_held_out_group_and_serve_its_folds(fake_dataset, monkeypatch, tmp_path,
                                                                        fold_batch: int) -> None:
    """train.distill_shared: each group's teacher members train once, on the other groups' rows alone, and every
    fold of the group gets the same teacher predictions as a fold run by itself."""
    monkeypatch.setattr(selection, "_GROUP_TEACHERS", {})
    seen: list[torch.Tensor] = []
    per_fold: list[str] = []
    real = selection.train_teachers

    def spy(dataset, cfg, jobs, **kw):
        out = real(dataset, cfg, jobs, **kw)
        seen.extend(dataset.x[idx] for idx, _, name in jobs if " group " in name and "select" not in name)
        per_fold.extend(name for _, _, name in jobs if name.startswith("fold"))
        return out

    monkeypatch.setattr(selection, "train_teachers", spy)
    subjects = tuple(fake_dataset.subject_list())
    cfg = grouped_cfg(subjects, fold_batch)
    r = run_loso(cfg, fake_dataset, out_dir=tmp_path / "all", progress=False)
    assert r["teacher"]["shared"] and r["teacher"]["members"] == 2
    assert len(seen) == 3 and not per_fold  # one training (of 2 members) per group, none per fold
    groups = selection._deal(list(fake_dataset.subjects), 3, selection.shared_seed(0), "test")
    for group in groups:  # each group teacher's rows are exactly the other groups' (so never a held-out subject's)
        others = fake_dataset.x[torch.tensor([s not in group for s in fake_dataset.subjects])]
        assert any(x.shape == others.shape and torch.equal(x, others) for x in seen)
    # a fold run alone (a fresh process: no cached teacher) predicts with the same group teacher
    monkeypatch.setattr(selection, "_GROUP_TEACHERS", {})
    one = subjects[1]
    run_loso(replace(cfg, eval=replace(cfg.eval, folds=(one,))), fake_dataset, out_dir=tmp_path / "one",
             progress=False)
    a = json.loads(next((tmp_path / "all" / "folds").rglob(f"*{one.split('/')[-1]}*.json")).read_text())
    b = json.loads(next((tmp_path / "one" / "folds").rglob(f"*{one.split('/')[-1]}*.json")).read_text())
    assert a["teacher_probs"] == b["teacher_probs"]


def test_folds_that_chose_different_blends_train_in_one_batch(fake_dataset, monkeypatch) -> None:
    """Candidates that differ only in train.distill_mix train the same models, so a group of folds that chose
    different weights trains its students in one batch; each fold still gets its own blend, the loop's model."""
    monkeypatch.setattr(selection, "_GROUP_TEACHERS", {})
    calls: list[int] = []
    real = folds.train_models

    def spy(model_cfg, recipe, jobs, **kw):
        if model_cfg.name == "epir":
            calls.append(len(jobs))
        return real(model_cfg, recipe, jobs, **kw)

    monkeypatch.setattr(folds, "train_models", spy)
    subjects = fake_dataset.subject_list()[:4]
    cfg = grouped_cfg(tuple(subjects))
    choices = {(0, s): (i % 2, {"chosen": i % 2}) for i, s in enumerate(subjects)}  # weights 0.5, 1, 0.5, 1
    records = folds.run_fold_group(fake_dataset, cfg, [(0, s) for s in subjects], None, choices)
    assert calls == [4]  # before: one batch per chosen weight ([2, 2])
    for i, (subject, rec) in enumerate(zip(subjects, records)):
        loop = folds.run_fold(fake_dataset, cfg, subject, 0, choices=choices)
        torch.testing.assert_close(torch.tensor(rec["probs"]), torch.tensor(loop["probs"]), rtol=0, atol=1e-5)
        if i % 2:  # weight 1: the teacher's own probabilities
            torch.testing.assert_close(torch.tensor(rec["probs"]), torch.tensor(rec["teacher_probs"]), rtol=0,
                                       atol=1e-6)


def test_group_teachers_trained_before_the_folds_are_the_ones_a_fold_trains(fake_dataset, monkeypatch,
                                                                            one_torch_thread) -> None:
    """shared_teachers trains each group teacher the folds need once, in worker processes; adopted, they serve
    group_teacher without training, and predict as a teacher the fold's own process trains."""
    subjects = tuple(fake_dataset.subject_list())
    cfg = grouped_cfg(subjects)
    todo = [(0, s) for s in subjects]
    assert selection.shared_teachers(fake_dataset, cfg, todo, jobs=1) == {}  # one process trains each once anyway
    teachers = selection.shared_teachers(fake_dataset, cfg, todo, jobs=2)
    assert len(teachers) == 3  # one per group of the run seed
    monkeypatch.setattr(selection, "_GROUP_TEACHERS", {})
    own = {s: selection.teacher_proba(cfg, selection.group_teacher(fake_dataset, cfg, 0, s), fake_dataset.x)
           for s in subjects}  # trained here, one network at a time
    monkeypatch.setattr(selection, "_GROUP_TEACHERS", {})

    def no_training(*args, **kwargs):
        raise AssertionError("a group teacher was trained again")

    monkeypatch.setattr(selection, "train_teachers", no_training)
    selection.adopt_group_teachers(teachers)
    for s in subjects:
        got = selection.teacher_proba(cfg, selection.group_teacher(fake_dataset, cfg, 0, s), fake_dataset.x)
        torch.testing.assert_close(got, own[s], rtol=0, atol=1e-6)


def test_a_run_with_group_teachers_in_workers_equals_one_process(fake_dataset, monkeypatch, tmp_path) -> None:
    """epir loso trains the group teachers in its worker processes before the folds (timed in results.json): the
    folds get the predictions of a run in one process."""
    subjects = tuple(fake_dataset.subject_list())
    cfg = grouped_cfg(subjects)
    runs = {}
    for jobs in (1, 2):
        monkeypatch.setattr(selection, "_GROUP_TEACHERS", {})
        c = replace(cfg, eval=replace(cfg.eval, jobs=jobs))
        runs[jobs] = run_loso(c, fake_dataset, out_dir=tmp_path / f"j{jobs}", progress=False)
    assert "shared_seconds" in runs[2]["teacher"] and "shared_seconds" not in runs[1]["teacher"]
    for f in (tmp_path / "j1" / "folds").rglob("*.json"):
        a = json.loads(f.read_text())
        b = json.loads((tmp_path / "j2" / f.relative_to(tmp_path / "j1")).read_text())
        torch.testing.assert_close(torch.tensor(b["teacher_probs"]), torch.tensor(a["teacher_probs"]), rtol=0,
                                   atol=1e-6)
        torch.testing.assert_close(torch.tensor(b["probs"]), torch.tensor(a["probs"]), rtol=0, atol=1e-5)


def test_distill_shared_needs_groups_a_teacher_and_no_soft_targets() -> None:
    base = replace(default_recipe("epir", "alone"), distill="ststnet", distill_weight=0.0, select_shared=6,
                   distill_shared=True)
    check_ranges(RunConfig(train=base))
    for bad in (replace(base, select_shared=0), replace(base, distill_weight=0.5), replace(base, distill="")):
        with pytest.raises(ConfigError, match="train.distill_shared"):
            check_ranges(RunConfig(train=bad))


def test_teacher3_grouped_recipe_and_lever() -> None:
    from epir.engine.ablate import lever_arm
    from epir.runsetup import resolve_config

    three = epir.make_config("epir", recipe="teacher3-mix-shared")
    grouped = epir.make_config("epir", recipe="teacher3-mix-grouped")
    assert grouped.train == replace(three.train, distill_shared=True)
    check_ranges(grouped)
    arm, on = lever_arm(three, "teacher-grouped")
    assert arm == "+teacher-grouped" and resolve_config(on) == resolve_config(grouped)
    arm, off = lever_arm(grouped, "teacher-grouped")
    assert arm == "-teacher-grouped" and resolve_config(off) == resolve_config(three)
    for lever in ("teacher-mix", "mix-select"):  # taking the teacher or the groups away is a valid configuration
        check_ranges(resolve_config(lever_arm(grouped, lever)[1]))


def test_teacher3_coarse_recipe_and_lever() -> None:
    """``teacher3-mix-coarse`` is A with the grid 0, 0.5, 1; the ``mix-coarse`` lever adds it and takes it away."""
    from epir.engine.ablate import lever_arm
    from epir.models.epir import COARSE_MIX_WEIGHTS
    from epir.runsetup import resolve_config

    three = epir.make_config("epir", recipe="teacher3-mix-shared")
    coarse = epir.make_config("epir", recipe="teacher3-mix-coarse")
    grid = tuple(f"train.distill_mix={m}" for m in COARSE_MIX_WEIGHTS)
    assert COARSE_MIX_WEIGHTS == ("0", "0.5", "1")
    assert coarse.train == replace(three.train, select=grid)
    check_ranges(coarse)
    arm, on = lever_arm(three, "mix-coarse")
    assert arm == "+mix-coarse" and resolve_config(on) == resolve_config(coarse)
    arm, off = lever_arm(coarse, "mix-coarse")
    assert arm == "-mix-coarse" and resolve_config(off) == resolve_config(three)
    # on EPIR alone the arm is the coarse choice of a single teacher's weight on the shared groups
    arm, alone_on = lever_arm(epir.make_config("epir", recipe="alone"), "mix-coarse")
    resolved = resolve_config(alone_on)
    check_ranges(resolved)
    assert arm == "+mix-coarse" and resolved.train.distill == "ststnet" and resolved.train.select == grid
    assert resolved.train.select_shared == 6 and resolved.train.distill_members == 1


def test_member_seeds_error_names_the_setting() -> None:
    from epir.engine.selection import member_seeds

    assert member_seeds(5, 1) == [5]
    with pytest.raises(ConfigError, match="train.distill_members must be >= 1"):
        member_seeds(5, 0, setting="train.distill_members")
    with pytest.raises(ConfigError, match="train.ensemble must be >= 1"):
        member_seeds(5, 0)
