"""``train.distill_groups``: the group teachers trained without groups of their own (round 34)."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import epir
from epir.config import DataConfig, EvalConfig, ModelConfig, RunConfig, check_ranges
from epir.engine import selection
from epir.engine.loso import run_loso
from epir.errors import ConfigError
from epir.models import default_recipe


def groups_cfg(subjects: tuple[str, ...], distill_groups: int, jobs: int = 1) -> RunConfig:
    """A tiny default-like run: group teachers (2 members) on 3 shared selection groups, their own groups aside."""
    return RunConfig(model=ModelConfig(name="epir", args={"dim": 16, "heads": 2, "depths": [1, 1]}),
                     data=DataConfig(dataset="megc2019"),
                     train=replace(default_recipe("epir", "alone"), epochs=1, distill="ststnet", distill_weight=0.0,
                                   distill_overrides=("train.epochs=1",), distill_mix=0.5, distill_members=2,
                                   distill_shared=True, distill_groups=distill_groups,
                                   select=("train.distill_mix=0.5", "train.distill_mix=1"), select_shared=3),
                     eval=EvalConfig(threads=1, report=False, folds=subjects, jobs=jobs))


def test_no_groups_of_their_own_are_the_selection_groups(fake_dataset) -> None:
    """0 (the default) deals the teachers' groups as the weight's shared groups; the same count gives the same groups
    and the same cached teachers."""
    subjects = tuple(fake_dataset.subject_list())
    zero, three = groups_cfg(subjects, 0), groups_cfg(subjects, 3)
    for seed in (0, 1):
        shared = selection.shared_groups(fake_dataset.subjects, 3, seed)
        assert selection.teacher_groups(fake_dataset.subjects, zero, seed) == shared
        assert selection.teacher_groups(fake_dataset.subjects, three, seed) == shared
        assert selection._group_teacher_key(fake_dataset, zero, seed, 1) == \
            selection._group_teacher_key(fake_dataset, three, seed, 1)
    assert selection.teacher_group_count(zero) == 3
    assert selection._group_teacher_key(fake_dataset, zero, 0, 1) != \
        selection._group_teacher_key(fake_dataset, groups_cfg(subjects, 2), 0, 1)


@pytest.mark.parametrize("count", [4, 6])
def test_each_teacher_trains_without_its_own_group_and_serves_only_it(fake_dataset, monkeypatch, tmp_path,
                                                                     count: int) -> None:
    """With G_t groups of their own, a run trains G_t group teachers, each on exactly the rows outside its group (with
    G_t = the subject count: each fold's training subjects, as a teacher per fold); every fold's teacher is its own
    subject's group's, so no teacher of a fold saw a row of the held-out subject. The inner selection is untouched."""
    monkeypatch.setattr(selection, "_GROUP_TEACHERS", {})
    trained: dict[str, set[str]] = {}
    real = selection.train_teachers

    def spy(dataset, cfg, jobs, **kw):
        for idx, _, name in jobs:
            if " group " in name and "select" not in name:
                trained[name] = {dataset.subjects[i] for i in np.asarray(idx)}
        return real(dataset, cfg, jobs, **kw)

    monkeypatch.setattr(selection, "train_teachers", spy)
    subjects = tuple(fake_dataset.subject_list())
    cfg = groups_cfg(subjects, count)
    r = run_loso(cfg, fake_dataset, out_dir=tmp_path / "run", progress=False)
    assert r["teacher"]["groups"] == count and r["teacher"]["shared"]
    groups = selection.teacher_groups(fake_dataset.subjects, cfg, 0)
    assert len(groups) == count and sorted(s for g in groups for s in g) == sorted(subjects)
    assert trained == {f"seed 0 group {g}": set(subjects) - set(group) for g, group in enumerate(groups)}
    for subject in subjects:  # the teacher that served the fold: its own group's, trained without the subject
        teacher = selection.group_teacher(fake_dataset, cfg, 0, subject)
        g = next(j for j, group in enumerate(groups) if subject in group)
        assert teacher is selection._GROUP_TEACHERS[selection._group_teacher_key(fake_dataset, cfg, 0, g)]
        assert subject not in trained[f"seed 0 group {g}"]
        rec = json.loads(next((tmp_path / "run" / "folds").rglob(f"*{subject.split('/')[-1]}*.json")).read_text())
        probs = selection.teacher_proba(cfg, teacher, fake_dataset.x[torch.tensor(
            [s == subject for s in fake_dataset.subjects])])
        torch.testing.assert_close(torch.tensor(rec["teacher_probs"]), probs, rtol=0, atol=1e-6)
    if count == len(subjects):  # a teacher per fold: its rows are the fold's training rows
        assert all(len(t) == len(subjects) - 1 for t in trained.values())


def test_teacher_groups_in_workers_equal_one_process(fake_dataset, monkeypatch, tmp_path) -> None:
    """The group teachers trained before the folds in worker processes are the ones a run in one process trains."""
    subjects = tuple(fake_dataset.subject_list())
    runs = {}
    for jobs in (1, 2):
        monkeypatch.setattr(selection, "_GROUP_TEACHERS", {})
        runs[jobs] = run_loso(groups_cfg(subjects, 4, jobs), fake_dataset, out_dir=tmp_path / f"j{jobs}",
                              progress=False)
    for f in (tmp_path / "j1" / "folds").rglob("*.json"):
        a = json.loads(f.read_text())
        b = json.loads((tmp_path / "j2" / f.relative_to(tmp_path / "j1")).read_text())
        torch.testing.assert_close(torch.tensor(b["teacher_probs"]), torch.tensor(a["teacher_probs"]), rtol=0,
                                   atol=1e-6)


def test_distill_groups_is_range_checked(fake_dataset, tmp_path) -> None:
    subjects = tuple(fake_dataset.subject_list())
    for bad in (1, -2):
        with pytest.raises(ConfigError, match=r"train.distill_groups=.*expected 0 .* or an integer >= 2"):
            check_ranges(groups_cfg(subjects, bad))
    alone = groups_cfg(subjects, 4)
    with pytest.raises(ConfigError, match=r"train.distill_groups=4: expected .*train.distill_shared=true"):
        check_ranges(replace(alone, train=replace(alone.train, distill_shared=False)))
    # more groups than subjects: one error naming the setting before anything trains (no run directory)
    with pytest.raises(ConfigError, match=r"train.distill_groups=7 needs at least 7 subjects .* got 6; lower "
                                          r"train.distill_groups"):
        run_loso(groups_cfg(subjects, 7), fake_dataset, out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_teacher_groups_lever() -> None:
    """The lever adds 17 teacher groups to the default and takes them away; the other teacher levers undo them."""
    from epir.engine.ablate import lever_arm
    from epir.runsetup import resolve_config

    default = epir.make_config("epir")
    arm, on = lever_arm(default, "teacher-groups")
    assert arm == "+teacher-groups" and on.train == replace(default.train, distill_groups=17)
    check_ranges(on)
    arm, off = lever_arm(on, "teacher-groups")
    assert arm == "-teacher-groups" and resolve_config(off) == resolve_config(default)
    for lever in ("teacher-mix", "mix-select", "teacher-grouped", "distill"):  # each leaves a valid configuration
        check_ranges(resolve_config(lever_arm(on, lever)[1]))
