"""Raw dataset trees in each real layout, end to end: located, processed, cached, reported, loaded by megc2019."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import epir.preprocess.batch as batch
from epir.cli import main
from epir.data import load_dataset
from epir.errors import DatasetNotFoundError
from epir.preprocess import PreprocessSettings, locate_clips, preprocess_dataset
from fakes_preprocess import (
    CASME2_CLIPS,
    CASME3_CLIPS,
    MAKERS,
    SAMM_CLIPS,
    SMIC_CLIPS,
    clip_frames,
    make_casme2,
    make_casme3,
    make_composite,
    make_smic,
    write_avi,
)

FAST = PreprocessSettings(flow_method="farneback")
LABELS = {"casme2": "composite", "samm": "composite", "smic": "composite", "casme3": "casme3-3"}
#: The clips' annotated (subject as the loader names it, apex frame), per dataset, in sheet order.
APEXES = {
    "casme2": [(f"sub{s}", a) for s, _, _, a, *_ in CASME2_CLIPS],
    "samm": [(s, a) for s, _, _, a, *_ in SAMM_CLIPS],
    "smic": [(f"s{int(s):02d}", a) for s, _, _, a, *_ in SMIC_CLIPS],
    "casme3": [(s, a) for s, _, _, a, *_ in CASME3_CLIPS],
}


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    """Counts the clips actually computed (not taken from the cache)."""
    calls: list[int] = []
    real = batch.run_clip

    def run_clip(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "run_clip", run_clip)
    return calls


@pytest.mark.parametrize("dataset", ["casme2", "samm", "smic", "casme3"])
def test_each_layout_end_to_end(dataset: str, tmp_path: Path) -> None:
    raw = MAKERS[dataset](tmp_path / "raw")
    summary = preprocess_dataset(dataset, raw, tmp_path / "out", labels=LABELS[dataset], settings=FAST, progress=False)
    assert summary.ok == 3 and summary.skipped == 0, summary.text()
    report = pd.read_csv(tmp_path / "out" / "report.csv", dtype={"subject": str})
    assert report["status"].tolist() == ["ok"] * 3
    assert report["apex"].tolist() == [a for _, a in APEXES[dataset]]  # the sheet's apex, found by frame number

    ds = load_dataset("megc2019", root=str(tmp_path / "out"))
    assert len(ds) == 3 and ds.x.shape == (3, 3, 28, 28)
    assert ds.subjects == [f"{dataset}/{s}" for s, _ in APEXES[dataset]]
    assert ds.class_names == ("negative", "positive", "surprise") and sorted(ds.y.tolist()) == [0, 1, 2]
    assert ds.info["landmarks"].shape == (3, 5, 2)
    # the PNG holds exactly the map of the npz, in the loader's u, v, strain order
    npz = np.load(tmp_path / "out" / "flow" / dataset / ds.subject_ids[0] / f"{ds.clips[0]}.npz")
    assert np.array_equal(ds.x[0].numpy(), npz["map"].astype(np.float32))
    assert npz["flow"].shape == (128, 128, 2) and npz["strain"].shape == (128, 128)
    assert npz["onset_landmarks"].shape == (68, 2) and npz["apex_landmarks"].shape == (68, 2)
    assert int(npz["apex_frame"]) == APEXES[dataset][0][1]
    assert json.loads(str(npz["settings"]))["flow_method"] == "farneback"


def test_layout_variants(tmp_path: Path) -> None:
    # CASME II: raw and cropped side by side -> the raw frames; the cropped folder alone is read too
    make_casme2(tmp_path / "c2")
    make_casme2(tmp_path / "c2", cropped=True)
    table = locate_clips("casme2", tmp_path / "c2")
    assert "CASME2_RAW_selected" in table.attrs["dataset_dir"] and table["frames"][0][0].endswith("img46.jpg")
    cropped = locate_clips("casme2", tmp_path / "c2" / "Cropped", sheet=tmp_path / "c2" / "CASME2-coding-20140508.xlsx")
    assert cropped["frames"][0][0].endswith("reg_img46.jpg") and (cropped["problem"] == "").all()
    # CAS(ME)^3 copies that write spNo.1: subject folders matched case-insensitively; clips share a video
    make_casme3(tmp_path / "c3", subject_case="spNo")
    table = locate_clips("casme3", tmp_path / "c3")
    assert (table["problem"] == "").all() and table["frame_dir"][0] == table["frame_dir"][1]
    assert [len(f) for f in table["frames"]] == [5, 5, 4]  # onset..offset of each clip, not the whole video


def test_smic_without_apex_and_renumbered_frames(tmp_path: Path) -> None:
    # the original SMIC-HS release numbers its files differently from the sheets: first frame = onset
    make_smic(tmp_path / "a", renumber=400000)
    s = preprocess_dataset("smic", tmp_path / "a", tmp_path / "oa", settings=FAST, progress=False)
    assert s.ok == 3 and s.report["apex_estimated"].all()
    assert s.report["note"].str.contains("first frame is the onset").all()
    assert s.report["apex"].tolist() == [a + 400000 for _, a in APEXES["smic"]]  # the peak-motion frames
    # the SMIC-HS-E sheet has no apex at all: estimated (max_flow) where the frame numbers match
    make_smic(tmp_path / "b", apex_sheet=False)
    s = preprocess_dataset("smic", tmp_path / "b", tmp_path / "ob", settings=FAST, progress=False)
    assert s.report["apex"].tolist() == [a for _, a in APEXES["smic"]]
    assert s.report["note"].str.contains("no apex in the sheet").all()


def test_bad_inputs_are_reported_and_exit_2(tmp_path: Path, capsys) -> None:
    raw = make_casme2(tmp_path / "raw", CASME2_CLIPS + [("02", "EP05_02f", 20, 22, 24, "happiness", 5),
                                                         ("03", "EP07_01f", 1, 2, 3, "surprise", 5)])
    clips = raw / "CASME2_RAW_selected"
    (clips / "sub01" / "EP02_01f" / "img49.jpg").unlink()  # the apex frame
    (clips / "sub01" / "EP03_02f" / "img10.jpg").write_bytes(b"not a jpeg")  # the onset frame
    blank = np.full((224, 224, 3), 90, np.uint8)
    cv2.imwrite(str(clips / "sub02" / "EP05_02f" / "img20.jpg"), blank)  # no face in the onset frame
    shutil.rmtree(clips / "sub03")  # the clip's folder
    out = tmp_path / "out"
    args = ["preprocess", "casme2", "--root", str(raw), "--out", str(out), "--labels", "composite",
            "--flow", "farneback", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "4 clip(s) skipped" in err and "--skip-bad" in err and "Traceback" not in err
    report = pd.read_csv(out / "report.csv", keep_default_na=False).set_index("clip")
    assert report.loc["EP01_11f", "status"] == "ok"
    reasons = report["reason"]
    assert reasons["EP02_01f"].startswith("missing frame: apex frame 49 is not in the folder (frames 46-51")
    assert reasons["EP03_02f"].startswith("unreadable image: Frame") and "img10.jpg" in reasons["EP03_02f"]
    assert reasons["EP05_02f"].startswith("no face: No face found")
    assert reasons["EP07_01f"].startswith("missing frame: no frame folder") and "sub03" in reasons["EP07_01f"]
    assert (report.loc[["EP02_01f", "EP03_02f", "EP05_02f", "EP07_01f"], "status"] == "skipped").all()
    assert len(load_dataset("megc2019", root=str(out))) == 1  # the good clip is written and loads
    assert main([*args, "--skip-bad"]) == 0


def test_resume_does_not_recompute(tmp_path: Path, counted: list[int]) -> None:
    raw = make_casme2(tmp_path / "raw")
    out = tmp_path / "out"
    preprocess_dataset("casme2", raw, out, labels="composite", settings=FAST, progress=False)
    assert len(counted) == 3
    s = preprocess_dataset("casme2", raw, out, labels="composite", settings=FAST, progress=False)
    assert len(counted) == 3 and s.cached == 3 and s.ok == 3  # nothing recomputed
    (out / "flow" / "casme2" / "sub02" / "EP01_11f.npz").unlink()
    preprocess_dataset("casme2", raw, out, labels="composite", settings=FAST, progress=False)
    assert len(counted) == 4  # only the clip whose output is gone
    s = preprocess_dataset("casme2", raw, out, labels="composite", progress=False,
                           settings=PreprocessSettings(flow_method="farneback", size=14))
    assert len(counted) == 7 and s.cached == 0  # other settings: every clip again
    assert load_dataset("megc2019", root=str(out)).x.shape == (3, 3, 14, 14)


def test_parallel_jobs_give_the_same_maps(tmp_path: Path) -> None:
    raw = make_casme2(tmp_path / "raw")
    one = preprocess_dataset("casme2", raw, tmp_path / "one", labels="composite", settings=FAST, progress=False)
    two = preprocess_dataset("casme2", raw, tmp_path / "two", labels="composite", settings=FAST, jobs=2,
                             progress=False)
    assert one.ok == two.ok == 3
    a, b = (load_dataset("megc2019", root=str(tmp_path / d)) for d in ("one", "two"))
    assert np.array_equal(a.x.numpy(), b.x.numpy()) and a.clips == b.clips


def test_composite_from_the_command_line(tmp_path: Path, capsys) -> None:
    raw = make_composite(tmp_path / "raw")
    out = tmp_path / "out"
    assert main(["preprocess", "composite", "--root", str(raw), "--out", str(out), "--flow", "dis",
                 "--no-progress"]) == 0
    assert "9 clips: 9 processed" in capsys.readouterr().out
    ds = load_dataset("megc2019", root=str(out))
    assert ds.subject_list() == ["casme2/sub01", "casme2/sub02", "samm/006", "samm/007", "smic/s01", "smic/s02"]
    assert ds.y.tolist() == [1, 0, 2, 0, 1, 2, 0, 1, 2]
    from epir.data.transforms import apply_input_transform

    mosaic, report = apply_input_transform(ds, "mosaic")  # HTNet's regions around each clip's own landmarks
    assert report["landmarks"].startswith("per-sample") and mosaic.x.shape == (9, 3, 28, 28)
    # explicit sheets, one per dataset; a bare file is refused for the composite set
    sheet = raw / "CASME2" / "CASME2-coding-20140508.xlsx"
    table = locate_clips("composite", raw, sheet={"casme2": sheet})
    assert table.attrs["sheets"]["casme2"] == str(sheet)
    assert main(["preprocess", "composite", "--root", str(raw), "--out", str(out), "--sheet", str(sheet)]) == 2
    assert "--sheet casme2=FILE" in capsys.readouterr().err


def test_dataset_errors(tmp_path: Path, capsys) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"No CASME II frames found under .*sub01/EP02_01f/img46\.jpg"):
        locate_clips("casme2", tmp_path)
    raw = make_casme2(tmp_path / "raw")
    (raw / "CASME2-coding-20140508.xlsx").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"No CASME II label sheet found .*--sheet FILE"):
        locate_clips("casme2", raw)
    assert main(["preprocess", "casme2", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["preprocess", "casm2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "neither a raw dataset nor an existing video" in err and "Did you mean 'casme2'" in err
    assert main(["preprocess", "casme2", "--out", str(tmp_path / "o")]) == 2
    assert "needs --root" in capsys.readouterr().err
    assert main(["preprocess", "samm", "--root", str(raw), "--out", str(tmp_path / "o"), "--apex", "peak"]) == 2
    assert "--apex 'peak'" in capsys.readouterr().err
    assert main(["preprocess", "casme2", "--root", str(raw), "--out", str(tmp_path / "o"), "--jobs", "0"]) == 2
    assert "jobs must be a positive number" in capsys.readouterr().err
    # a mistake that would fail every clip alike stops the run instead of skipping them all
    assert main(["preprocess", "casme2", "--root", str(raw), "--out", str(tmp_path / "o"), "--sheet",
                 str(tmp_path / "raw" / "missing.xlsx")]) == 2
    assert "missing.xlsx does not exist" in capsys.readouterr().err
    make_casme2(tmp_path / "raw2")
    assert main(["preprocess", "casme2", "--root", str(tmp_path / "raw2"), "--out", str(tmp_path / "o"),
                 "--flow-param", "epsilonn=0.1", "--no-progress"]) == 2
    assert "Unknown tvl1 flow parameter 'epsilonn'" in capsys.readouterr().err


def test_one_clip_from_the_command_line(tmp_path: Path, capsys) -> None:
    video = write_avi(tmp_path / "rec.avi", clip_frames(4, 6, 3, peak=2.0))
    out = tmp_path / "out"
    assert main(["preprocess", str(video), "--out", str(out), "--flow", "dis"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["apex"] == 3 and info["apex_estimated"] is True
    npz = np.load(out / "rec.npz")
    png = cv2.imread(str(out / "rec.png"))
    assert np.array_equal(png[:, :, ::-1].transpose(2, 0, 1), npz["map"])  # BGR on disk, u, v, strain in npz
    assert main(["preprocess", str(video), "--out", str(out), "--onset", "4", "--apex", "1"]) == 2
    assert "comes after the apex" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- the real label sheets

REAL_SHEETS = {"casme2": "CASME2-coding-20140508.xlsx", "samm": "SAMM_Micro_FACS_Codes_v2.xlsx",
               "smic": "smic_apex.xlsx", "casme3": "CAS(ME)3_part_A_ME_label_JpgIndex_v2.xlsx"}
#: The first clip of each real sheet, its frame folder in the dataset's layout and its frame file names.
REAL_FIRST = {
    "casme2": ("CASME2_RAW_selected/sub01/EP02_01f", "img{}.jpg", 46, 59, 86),
    "samm": ("SAMM/006/006_1_2", "006_{:05d}.jpg", 5562, 5588, 5632),
    "smic": ("HS_long/SMIC_HS_E/s20/s20_ne_01", "image{}.jpg", 17581039, 17581046, 17581055),
    "casme3": ("part_A/data/part_A/spNO.1/a/color", "{}.jpg", 355, 359, 360),
}


def touch_frames(root: Path, dataset: str) -> None:
    folder, name, onset, _, offset = REAL_FIRST[dataset]
    (root / folder).mkdir(parents=True, exist_ok=True)
    for n in range(onset - 3, offset + 3):  # the frames are not read when locating clips
        (root / folder / name.format(n)).touch()


@pytest.mark.realdata
@pytest.mark.parametrize("dataset", list(REAL_SHEETS))
def test_real_sheets_name_the_frame_folders(dataset: str, real_data: Path, tmp_path: Path) -> None:
    """The datasets' own sheets (their subject and clip names) lead to the folders of each real layout."""
    import warnings

    touch_frames(tmp_path, dataset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sheets' flagged rows (AnnotationWarning) are not the subject here
        table = locate_clips(dataset, tmp_path, sheet=real_data / "annotations" / REAL_SHEETS[dataset])
    first = table.iloc[0]
    _, _, onset, apex, offset = REAL_FIRST[dataset]
    assert first["problem"] == "" and len(first["frames"]) == offset - onset + 1
    assert first["apex_index"] == apex - onset and Path(first["frames"][0]).name == REAL_FIRST[dataset][1].format(onset)
    others = table.iloc[1:]
    assert (others["problem"].str.startswith("missing frame")).all()


@pytest.mark.realdata
def test_real_composite_sheets_give_442_clips(real_data: Path, tmp_path: Path) -> None:
    import warnings

    for dataset in ("casme2", "samm", "smic"):
        touch_frames(tmp_path, dataset)
    sheets = {d: real_data / "annotations" / REAL_SHEETS[d] for d in ("casme2", "samm", "smic")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = locate_clips("composite", tmp_path, sheet=sheets)
    assert table["dataset"].value_counts().to_dict() == {"smic": 164, "casme2": 145, "samm": 133}
    assert (table["problem"] == "").sum() == 3  # one clip per dataset has frames here
