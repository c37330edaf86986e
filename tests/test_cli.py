"""The `epir` command line through `epir.cli.main([...])`: help, list, a tiny LOSO, errors without tracebacks."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import epir.engine.folds as folds
from epir.cli import main
from epir.config import RunConfig, apply_overrides, parse_key_value
from fakes import interrupt_on_call

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def loso_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["loso", "--model", "ststnet", "--dataset", "megc2019", "--root", str(root), "--epochs", "2",
            "--threads", "1", "--out", str(out), "--no-progress", *extra]


def assert_clean_error(err: str) -> None:
    """A handled error: one ``epir COMMAND: error: ...`` line on stderr (no traceback, no second line)."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines, "an error must say something on stderr"
    assert lines[-1].startswith("epir ") and ": error: " in lines[-1], lines[-1]
    assert "Traceback" not in err


def test_help_lists_the_subcommands(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("loso", "evaluate", "demo", "list"):
        assert command in out


@pytest.mark.parametrize("command", ["loso", "evaluate", "demo", "list"])
def test_subcommand_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_no_command_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


def test_list_models(capsys) -> None:
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "ststnet" in out
    assert "Liong" in out  # with its description


@pytest.mark.parametrize("model", ["epir", "htnet", "ststnet"])
def test_list_args_gives_every_argument_a_settable_default_and_a_description(model, capsys) -> None:
    from epir.models import model_defaults

    assert main(["list", "args", "--model", model]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(model_defaults(model))
    for line, (key, default) in zip(lines, model_defaults(model).items(), strict=True):
        setting, _, text = line.partition("  ")
        assert parse_key_value(setting) == (f"model.{key}", list(default) if isinstance(default, tuple) else default)
        assert text.strip(), f"model.{key} has no description in {model}'s docstring (Args:)"


def test_list_recipes_gives_each_recipe_as_the_settings_that_make_it(capsys) -> None:
    from epir.models import default_recipe, list_recipes

    assert main(["list", "recipes", "--model", "epir"]) == 0
    out = capsys.readouterr().out
    assert "teacher3-mix-grouped  (the default)" in out.splitlines() and "\ndefault" not in out
    blocks: dict[str, list[str]] = {}
    for line in out.splitlines():
        if not line.startswith("    "):
            blocks[line.split()[0]] = []
        else:
            blocks[list(blocks)[-1]].append(line.strip())
    assert set(blocks) == set(list_recipes("epir")) - {"default"}
    for recipe, settings in blocks.items():  # --set of those settings on the plain TrainConfig gives the recipe
        cfg = apply_overrides(RunConfig(), settings)
        assert cfg.train == default_recipe("epir", recipe), recipe


def test_list_datasets(capsys) -> None:
    assert main(["list", "datasets"]) == 0
    assert "megc2019" in capsys.readouterr().out


def test_list_subjects(fake_root, capsys) -> None:
    assert main(["list", "subjects", "--dataset", "megc2019", "--root", str(fake_root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "casme2/sub01\t4"
    assert len(lines) == 6 and "samm/006\t4" in lines


def test_loso_end_to_end(fake_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(loso_args(fake_root, out)) == 0
    for name in ("config.yaml", "results.json", "predictions.csv", "megc_log.txt"):
        assert (out / name).is_file(), name
    assert len(list((out / "folds" / "seed0").glob("*.json"))) == 6
    printed = capsys.readouterr().out
    assert "protocol: honest" in printed and "UF1" in printed and str(out) in printed
    results = json.loads((out / "results.json").read_text())
    assert results["model"] == "ststnet" and results["dataset"] == "megc2019" and results["n"] == 24
    cfg = RunConfig.load(out / "config.yaml")
    assert cfg.model.name == "ststnet"
    assert cfg.model.args == {"num_classes": 3, "bgr_input": True, "dropout": 0.5}  # resolved, every argument written
    assert cfg.train.epochs == 2
    assert cfg.train.lr == 5e-5  # STSTNet's own recipe
    assert cfg.data.dataset == "megc2019" and cfg.data.root == str(fake_root)


def test_set_lands_in_config_yaml(fake_root, tmp_path) -> None:
    out = tmp_path / "run"
    assert main(loso_args(fake_root, out, "--folds", "sub01", "--set", "train.lr=0.01",
                          "--set", "train.weight_decay=0.0001")) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["lr"] == 0.01
    assert saved["train"]["weight_decay"] == 1e-4
    assert saved["eval"]["folds"] == ["sub01"]
    assert RunConfig.load(out / "config.yaml").train.lr == 0.01


# PyYAML (YAML 1.1) reads '1e-3' (no dot) as a string: floats in exponent notation must still work.


def test_set_float_in_exponent_notation(fake_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(loso_args(fake_root, out, "--folds", "sub01", "--set", "train.lr=1e-3"))
    assert code == 0, capsys.readouterr().err
    assert RunConfig.load(out / "config.yaml").train.lr == 1e-3


def test_lr_flag_with_a_small_value(fake_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(loso_args(fake_root, out, "--folds", "sub01", "--lr", "5e-5"))
    assert code == 0, capsys.readouterr().err
    assert RunConfig.load(out / "config.yaml").train.lr == 5e-5


def test_lr_flag(fake_root, tmp_path) -> None:
    out = tmp_path / "run"
    assert main(loso_args(fake_root, out, "--folds", "sub01", "--lr", "0.003", "--batch-size", "8")) == 0
    cfg = RunConfig.load(out / "config.yaml")
    assert cfg.train.lr == 0.003 and cfg.train.batch_size == 8


def test_config_file_reproduces_a_run(fake_root, tmp_path) -> None:
    first = tmp_path / "first"
    assert main(loso_args(fake_root, first, "--folds", "006")) == 0
    second = tmp_path / "second"
    assert main(["loso", "--config", str(first / "config.yaml"), "--out", str(second), "--no-progress"]) == 0
    assert (first / "predictions.csv").read_text() == (second / "predictions.csv").read_text()


def test_set_unknown_key_did_you_mean(fake_root, tmp_path, capsys) -> None:
    code = main(loso_args(fake_root, tmp_path / "run", "--set", "train.lrr=0.01"))
    assert code == 2
    err = capsys.readouterr().err
    assert_clean_error(err)
    assert "did you mean 'lr'" in err.lower()


def test_set_wrong_type(fake_root, tmp_path, capsys) -> None:
    assert main(loso_args(fake_root, tmp_path / "run", "--set", "train.epochs=many")) == 2
    err = capsys.readouterr().err
    assert_clean_error(err)
    assert "train.epochs" in err and "int" in err


def test_unknown_model(fake_root, tmp_path, capsys) -> None:
    args = loso_args(fake_root, tmp_path / "run")
    args[args.index("ststnet")] = "ststnett"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert_clean_error(err)
    assert "Did you mean 'ststnet'" in err
    assert not (tmp_path / "run").exists()


def test_unknown_dataset(fake_root, tmp_path, capsys) -> None:
    args = loso_args(fake_root, tmp_path / "run")
    args[args.index("megc2019")] = "megc2091"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert_clean_error(err)
    assert "Did you mean 'megc2019'" in err


def test_unknown_fold(fake_root, tmp_path, capsys) -> None:
    assert main(loso_args(fake_root, tmp_path / "run", "--folds", "samm/06")) == 2
    err = capsys.readouterr().err
    assert_clean_error(err)
    assert "Did you mean 'samm/006'" in err


def test_missing_root(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("EPIR_MEGC2019_ROOT", raising=False)
    args = ["loso", "--model", "ststnet", "--dataset", "megc2019", "--epochs", "1",
            "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert_clean_error(err)
    assert "EPIR_MEGC2019_ROOT" in err and "--root" in err


def test_root_from_environment(fake_root, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EPIR_MEGC2019_ROOT", str(fake_root))
    out = tmp_path / "run"
    assert main(["loso", "--model", "ststnet", "--dataset", "megc2019", "--epochs", "1", "--threads", "1",
                 "--folds", "s01", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "results.json").read_text())["n"] == 4


def test_interrupt_exits_130_and_resume_hint(fake_root, tmp_path, monkeypatch, capsys) -> None:
    real = folds.run_fold
    monkeypatch.setattr(folds, "run_fold", interrupt_on_call(real, 2))
    out = tmp_path / "run"
    assert main(loso_args(fake_root, out, "--fold-batch", "1")) == 130
    err = capsys.readouterr().err
    assert "resume" in err and "--out" in err
    assert len(list((out / "folds" / "seed0").glob("*.json"))) == 1
    monkeypatch.setattr(folds, "run_fold", real)
    assert main(loso_args(fake_root, out)) == 0
    assert json.loads((out / "results.json").read_text())["resumed_folds"] == 1


def test_resume_with_other_settings_is_refused(fake_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(loso_args(fake_root, out, "--folds", "sub02")) == 0
    capsys.readouterr()
    assert main(loso_args(fake_root, out, "--folds", "sub02", "--lr", "0.5")) == 2
    err = capsys.readouterr().err
    assert_clean_error(err)
    assert "different configuration" in err and "train.lr" in err


def test_resume_follows_the_data_not_its_path(fake_root, tmp_path, capsys, monkeypatch) -> None:
    """The same folder under another spelling (relative) or moved resumes; other data at the same place is refused
    by the run's fingerprint (the dataset's digest), not by the path."""
    out = tmp_path / "run"
    assert main(loso_args(fake_root, out, "--folds", "sub02")) == 0
    monkeypatch.chdir(fake_root.parent)
    assert main(loso_args(Path(fake_root.name), out, "--folds", "sub02")) == 0  # relative
    moved = shutil.copytree(fake_root, tmp_path / "moved")
    assert main(loso_args(moved, out, "--folds", "sub02")) == 0
    assert json.loads((out / "results.json").read_text())["resumed_folds"] == 1
    image = next((moved / "datasets").rglob("*.png"))
    image.write_bytes(next(p for p in (fake_root / "datasets").rglob("*.png") if p.name != image.name).read_bytes())
    capsys.readouterr()
    assert main(loso_args(moved, out, "--folds", "sub02")) == 2
    err = capsys.readouterr().err
    assert_clean_error(err)
    assert "holds a run of other data" in err and "dataset.sha256" in err


def test_demo_runs_on_synthetic_data(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--epochs", "1", "--folds", "synthetic/s01", "synthetic/s02", "--jobs", "1",
                 "--threads", "1", "--out", str(out), "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "epir on synthetic" in text and f"run directory: {out}" in text
    assert (out / "results.json").is_file() and "dataset: synthetic" in (out / "config.yaml").read_text()


@pytest.mark.parametrize(("section", "expected"), [
    ({"train": {"tta": True}}, "train.tta: expected str, got True (bool); one of none | flip."),
    ({"train": {"epochs": "ten"}}, "train.epochs: expected int, got 'ten' (str)."),
])
def test_a_config_value_of_the_wrong_type_names_the_key_and_choices(section, expected) -> None:
    from epir.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(section)
    assert str(err.value) == expected


def test_one_seed_written_as_a_number_says_it_is_one_seed(recwarn) -> None:
    """`eval.seeds: 3` is seed 3, as `--seeds 3` is; a reader of a config file may expect three seeds: a warning."""
    with pytest.warns(UserWarning, match=r"eval.seeds: 3 is the one seed 3, not 3 seeds; .*\[0, 1, 2\]"):
        cfg = apply_overrides(RunConfig(), ["eval.seeds=3"])
    assert cfg.eval.seeds == (3,)
    recwarn.clear()
    assert apply_overrides(RunConfig(), ["eval.seeds=[3]"]).eval.seeds == (3,)  # a list never warns
    assert apply_overrides(RunConfig(), ["eval.seeds=1"]).eval.seeds == (1,)  # nor 0 or 1 (no count to misread)
    assert not [w for w in recwarn if "eval.seeds" in str(w.message)]
