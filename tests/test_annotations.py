"""Label sheets -> canonical annotation table: the real sheets (counts, the official MEGC2019 composite list,
the fixes), label schemes, the CLI, and bad input on small fake sheets built with openpyxl in tmp_path."""
from __future__ import annotations

import argparse
import csv
import warnings
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from epir.annotations import (
    COLUMNS,
    FIX_COLUMNS,
    LABEL_SCHEMES,
    AnnotationWarning,
    UnknownChoiceError,
    list_schemes,
    load_fixes,
    read_annotations,
)
from epir.annotations.cli import add_parser
from epir.errors import ConfigError, DatasetError, DatasetNotFoundError, UnknownNameError

# Rows flagged in 'issue' warn on every read; tests that check the warning use pytest.warns.
pytestmark = pytest.mark.filterwarnings("ignore::epir.annotations.AnnotationWarning")

CASME2_2014 = "CASME2-coding-20140508.xlsx"
CASME2_2019 = "CASME2-coding-20190701.xlsx"
SAMM = "SAMM_Micro_FACS_Codes_v2.xlsx"
SMIC_APEX = "smic_apex.xlsx"
SMIC_HSE = "SMIC-HS-E_annotation.xlsx"
CASME3 = "CAS(ME)3_part_A_ME_label_JpgIndex_v2.xlsx"

CASME2_HEADER = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None, "Action Units",
                 "Estimated Emotion"]


def write_xlsx(path: Path, rows: list[list], *, title: str = "Sheet1", preamble: list[list] = ()) -> Path:
    """A one-worksheet workbook: ``preamble`` rows (title, notes), then ``rows`` (header first)."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = title
    for row in [*preamble, *rows]:
        ws.append(row)
    wb.save(path)
    return path


def fake_casme2(path: Path, *extra: list) -> Path:
    rows = [
        CASME2_HEADER,
        ["01", "EP02_01f", None, 46, 59, 86, None, 12, "happiness"],
        [1, "EP19_05f", None, 396, 416, 446, None, "4+L10", " Disgust "],
        ["02", "EP01_11f", None, 46, 91, 96, None, 15, "repression"],
        ["02", "EP08_04", None, 16, 69, 106, None, 14, "others"],
        *extra,
    ]
    return write_xlsx(path, rows)


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="epir")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


# ----------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def sheets(real_data: Path) -> Path:
    folder = real_data / "annotations"
    if not (folder / CASME2_2014).is_file():
        pytest.skip(f"{folder} holds no label sheets (see ../shared/data/README.md)")
    return folder


@pytest.fixture(scope="module")
def official(real_data: Path) -> set[tuple[str, str, str, int]]:
    """The official MEGC2019 list as (db, subject, clip, label); no header, CRLF, SAMM subjects unpadded."""
    path = real_data / "megc2019" / "combined_3class_gt.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with open(path, newline="") as f:
        return {(db, subject, clip, int(label)) for db, subject, clip, label in csv.reader(f)}


@pytest.mark.realdata
@pytest.mark.parametrize("dataset, sheet, rows, subjects", [
    ("casme2", CASME2_2014, 255, 26),
    ("casme2", CASME2_2019, 255, 26),
    ("samm", SAMM, 159, 29),
    ("smic", SMIC_APEX, 164, 16),
    ("smic", SMIC_HSE, 157, 16),
    ("casme3", CASME3, 860, 94),
])
def test_real_sheets_parse_to_the_readme_counts(sheets, dataset, sheet, rows, subjects):
    df = read_annotations(dataset, sheets / sheet, labels=None, fixes=False)
    assert (len(df), df["subject"].nunique()) == (rows, subjects)
    assert list(df.columns[:len(COLUMNS)]) == list(COLUMNS)
    assert df["label"].isna().all() and (df["dataset"] == dataset).all()
    assert ("action_units" in df.columns) == (dataset != "smic")
    assert not df.duplicated(["subject", "clip"]).any()
    assert df["onset"].notna().all()


@pytest.mark.realdata
@pytest.mark.parametrize("dataset, sheet, counts", [
    ("casme2", CASME2_2014, [88, 32, 25]),
    ("samm", SAMM, [92, 26, 15]),
    ("smic", SMIC_APEX, [70, 51, 43]),
])
def test_composite_reproduces_the_official_megc2019_list(sheets, official, real_data, dataset, sheet, counts):
    df = read_annotations(dataset, sheets / sheet, labels="composite")
    assert df.attrs["classes"] == ("negative", "positive", "surprise")
    assert df["label"].value_counts().sort_index().tolist() == counts
    # The official list writes SAMM subjects unpadded (6); the table keeps the dataset's 006.
    subject = (lambda s: str(int(s))) if dataset == "samm" else (lambda s: s)
    ours = {(dataset, subject(s), c, int(y)) for s, c, y in zip(df["subject"], df["clip"], df["label"])}
    assert ours == {row for row in official if row[0] == dataset}
    # ... and the subject and clip names are exactly those of the HTNet composite CSV (006, s01, sub01).
    htnet = pd.read_csv(real_data / "htnet-composite" / "combined_3_class2_for_optical_flow.csv", dtype=str)
    htnet = htnet[htnet["dataset"] == dataset]
    assert set(zip(df["subject"], df["clip"])) == set(zip(htnet["sub"], htnet["filename_o"]))


@pytest.mark.realdata
def test_casme2_fixes_drop_the_two_unusable_apex_clips_with_their_reasons(sheets):
    df = read_annotations("casme2", sheets / CASME2_2014, labels="composite")
    drops = {(f["subject"], f["clip"]): f["reason"] for f in df.attrs["fixes"] if f["action"] == "drop"}
    assert set(drops) == {("sub04", "EP12_01f"), ("sub05", "EP09_05f")}
    assert "'/'" in drops[("sub04", "EP12_01f")] and "onset" in drops[("sub05", "EP09_05f")]
    assert not df["clip"].isin(["EP12_01f", "EP09_05f"]).any() and (df["issue"] == "").all()

    with pytest.warns(AnnotationWarning, match="sub04/EP12_01f"):
        raw = read_annotations("casme2", sheets / CASME2_2014, labels="composite", fixes=False)
    assert len(raw) == 147 and raw.attrs["fixes"] == []
    issues = dict(zip(raw["clip"], raw["issue"]))
    assert issues["EP12_01f"] == "apex '/' is not a frame number"
    assert issues["EP09_05f"] == "apex equals onset (69)"
    assert pd.isna(raw.loc[raw["clip"] == "EP12_01f", "apex"]).all()


@pytest.mark.realdata
def test_native_schemes_on_the_real_sheets(sheets):
    casme2 = read_annotations("casme2", sheets / CASME2_2014)  # native: casme2-5, sadness and fear left out
    assert casme2.attrs["scheme"] == "casme2-5"
    assert casme2["label"].value_counts().sort_index().tolist() == [32, 61, 27, 25, 99]  # 244 = 246 - 2 drops
    assert len(read_annotations("casme2", sheets / CASME2_2014, fixes=False)) == 246
    samm = read_annotations("samm", sheets / SAMM)
    assert samm["label"].value_counts().sort_index().tolist() == [57, 12, 26, 15, 26]  # the 136 of samm-5
    smic = read_annotations("smic", sheets / SMIC_APEX)
    assert smic["label"].value_counts().sort_index().tolist() == [70, 51, 43]


@pytest.mark.realdata
def test_casme3_fixes_and_its_three_schemes(sheets):
    seven = read_annotations("casme3", sheets / CASME3, labels="casme3-7")
    assert seven["label"].value_counts().sort_index().tolist() == [64, 250, 86, 55, 57, 187, 161]
    row = seven.set_index(["subject", "clip"])
    assert row.loc[("spNO.149", "d_112"), "apex"] == 160
    assert "tvaranka/meb" in row.loc[("spNO.149", "d_112"), "fix"]
    assert row.loc[("spNO.216", "d_3647"), "onset"] == 2647
    assert list(row.loc[("spNO.40", "e_1812"), ["onset", "apex", "offset"]]) == [1812, 1824, 1845]
    assert row.loc[("spNO.14", "j_1012"), "video"] == "j"  # the sheet writes 'J'
    # After the fixes only apex == onset remains flagged (kept, not changed).
    assert set(seven.loc[seven["issue"] != "", "issue"].str.split(" \\(").str[0]) == {"apex equals onset"}
    four = read_annotations("casme3", sheets / CASME3, labels="casme3-4")
    assert four["label"].value_counts().sort_index().tolist() == [457, 55, 187, 161]
    three = read_annotations("casme3", sheets / CASME3, labels="casme3-3")
    assert len(three) == 699 and three.attrs["classes"] == ("negative", "positive", "surprise")


@pytest.mark.realdata
def test_the_two_smic_sheets_agree_once_fixed(sheets):
    hse = read_annotations("smic", sheets / SMIC_HSE)
    apex = read_annotations("smic", sheets / SMIC_APEX).set_index("clip").loc[hse["clip"]]
    assert hse["apex"].isna().all() and (hse["issue"] == "").all()
    assert hse["onset"].tolist() == apex["onset"].tolist()
    assert hse["offset"].tolist() == apex["offset"].tolist()
    assert hse["emotion"].tolist() == apex["emotion"].tolist()
    fixed = hse.set_index("clip").loc["s18_sur_03"]
    assert fixed["emotion"] == "surprise" and "negative -> surprise" in fixed["fix"]
    missing_offset = read_annotations("smic", sheets / SMIC_APEX).query("issue != ''")
    assert len(missing_offset) == 7 and (missing_offset["issue"] == "offset missing").all()


@pytest.mark.realdata
def test_cli_writes_the_composite_csv(sheets, tmp_path, capsys):
    out = tmp_path / "out" / "casme2.csv"
    argv = ["annotations", "casme2", str(sheets / CASME2_2014), "--labels", "composite", "--csv", str(out)]
    assert run_cli(argv) == 0
    df = pd.read_csv(out, dtype={"subject": str})
    assert list(df.columns) == [*COLUMNS, "action_units", "issue", "fix"]
    assert len(df) == 145 and df["label"].value_counts().sort_index().tolist() == [88, 32, 25]
    assert "145 clips" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------- fake sheets


def test_fake_casme2_sheet_reads_to_the_canonical_table(tmp_path):
    df = read_annotations("casme2", fake_casme2(tmp_path / "casme2.xlsx"), labels="composite")
    assert list(df.columns) == [*COLUMNS, "action_units", "issue", "fix"]
    assert df[["subject", "clip", "emotion", "label"]].values.tolist() == [
        ["sub01", "EP02_01f", "happiness", 1],
        ["sub01", "EP19_05f", "disgust", 0],
        ["sub02", "EP01_11f", "repression", 0],
    ]  # 'others' is left out of the composite; ' Disgust ' and subject 1 are normalised
    assert df["onset"].dtype == "Int64" and df["label"].dtype == "int64"
    assert df["action_units"].tolist() == ["12", "4+L10", "15"]
    five = read_annotations("casme2", tmp_path / "casme2.xlsx")
    assert five.attrs["classes"][five["label"].iloc[-1]] == "others"


def test_missing_sheet_names_the_file(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="nowhere.xlsx does not exist"):
        read_annotations("casme2", tmp_path / "nowhere.xlsx")


def test_sheet_without_the_expected_columns_names_file_and_columns(tmp_path):
    path = write_xlsx(tmp_path / "wrong.xlsx", [["Subject", "Clip", "Onset"], ["01", "EP01", 1]])
    with pytest.raises(DatasetError, match=r"wrong\.xlsx: not a CASME II label sheet") as err:
        read_annotations("casme2", path)
    assert "OnsetFrame" in str(err.value) and "'Clip'" in str(err.value)  # expected and got


def test_unreadable_file_is_a_dataset_error(tmp_path):
    path = tmp_path / "broken.xlsx"
    path.write_text("not a workbook")
    with pytest.raises(DatasetError, match="broken.xlsx cannot be read"):
        read_annotations("samm", path)


def test_unknown_scheme_and_dataset_say_did_you_mean(tmp_path):
    sheet = fake_casme2(tmp_path / "casme2.xlsx")
    with pytest.raises(UnknownChoiceError, match="Did you mean 'casme2-5'") as err:
        read_annotations("casme2", sheet, labels="casme2_5")
    assert isinstance(err.value, ConfigError) and isinstance(err.value, UnknownNameError)
    assert "composite" in str(err.value)  # the known schemes are listed
    with pytest.raises(UnknownChoiceError, match="Unknown annotation dataset 'casme'. Did you mean"):
        read_annotations("casme", sheet)
    with pytest.raises(ConfigError, match="does not cover dataset 'casme3'.*casme3-3, casme3-4, casme3-7"):
        read_annotations("casme3", sheet, labels="composite")


def test_bad_rows_name_the_row(tmp_path):
    bad = fake_casme2(tmp_path / "bad.xlsx", ["03", "EP01_01", None, 1, 2, 3, None, 4, "suprise"])
    message = r"bad\.xlsx, worksheet 'Sheet1', row 6: emotion 'suprise'.*Did you mean 'surprise'"
    with pytest.raises(DatasetError, match=message):
        read_annotations("casme2", bad)
    dup = fake_casme2(tmp_path / "dup.xlsx", ["02", "EP08_04", None, 1, 2, 3, None, 4, "others"])
    with pytest.raises(DatasetError, match="rows 5, 6: clip sub02/EP08_04 appears more than once"):
        read_annotations("casme2", dup)
    subject = fake_casme2(tmp_path / "subject.xlsx", ["Note: see paper", "x", None, 1, 2, 3, None, 4, "others"])
    with pytest.raises(DatasetError, match="row 6: Subject 'Note: see paper'"):
        read_annotations("casme2", subject)


def test_missing_or_impossible_frames_are_flagged_and_warned(tmp_path):
    sheet = fake_casme2(tmp_path / "casme2.xlsx",
                        ["03", "EP01_01", None, 10, "/", 30, None, 4, "disgust"],
                        ["03", "EP01_02", None, 10, 40, 30, None, 4, "disgust"],
                        ["03", "EP01_03", None, 10, 5, None, None, 4, "disgust"])
    with pytest.warns(AnnotationWarning, match="3 row\\(s\\) kept with annotation issues"):
        df = read_annotations("casme2", sheet, labels="composite", fixes=False)
    issues = dict(zip(df["clip"], df["issue"]))
    assert issues["EP01_01"] == "apex '/' is not a frame number"
    assert issues["EP01_02"] == "apex 40 after offset 30"
    assert issues["EP01_03"] == "offset missing; apex 5 before onset 10"
    assert issues["EP02_01f"] == ""


def test_a_fixes_table_sets_drops_and_refuses_stale_fixes(tmp_path):
    sheet = fake_casme2(tmp_path / "casme2.xlsx", ["03", "EP01_01", None, 10, "/", 30, None, 4, "disgust"])
    fixes = pd.DataFrame([
        ["casme2", "", "sub03", "EP01_01", "set", "apex", "/", "20", "apex read off the frames"],
        ["casme2", "", "sub02", "EP01_11f", "drop", "", "", "", "a test drop"],
        ["casme2", "", "sub01", "EP02_01f", "set", "apex", "60", "61", "stale: the sheet says 59"],
        ["casme2", "other-*.xlsx", "sub01", "EP19_05f", "drop", "", "", "", "another sheet only"],
        ["samm", "", "006", "006_1_2", "drop", "", "", "", "another dataset"],
    ], columns=FIX_COLUMNS)
    with pytest.warns(AnnotationWarning, match=r"sub01/EP02_01f\) not applied: apex is '59'"):
        df = read_annotations("casme2", sheet, labels=None, fixes=fixes)
    assert df["clip"].tolist() == ["EP02_01f", "EP19_05f", "EP08_04", "EP01_01"]
    fixed = df.set_index("clip").loc["EP01_01"]
    assert fixed["apex"] == 20 and fixed["issue"] == "" and fixed["fix"] == "apex / -> 20: apex read off the frames"
    assert [f["reason"] for f in df.attrs["fixes"]] == ["apex read off the frames", "a test drop"]
    path = tmp_path / "fixes.csv"
    fixes.to_csv(path, index=False)
    assert len(read_annotations("casme2", sheet, fixes=path).attrs["fixes"]) == 2


def test_malformed_fixes_tables_are_config_errors(tmp_path):
    good = ["casme2", "", "sub03", "EP01_01", "set", "apex", "/", "20", "why"]
    cases = {
        "line 2: every fix needs a reason": good[:-1] + [""],
        "line 2: action 'fix' must be 'set' or 'drop'": good[:4] + ["fix"] + good[5:],
        "line 2: field 'apx' cannot be fixed.*Did you mean 'apex'": good[:5] + ["apx"] + good[6:],
        "line 2: dataset 'casme' is not one of": ["casme"] + good[1:],
    }
    for message, row in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_fixes(pd.DataFrame([row], columns=FIX_COLUMNS))
    with pytest.raises(ConfigError, match="missing column\\(s\\) reason"):
        load_fixes(pd.DataFrame([good[:-1]], columns=FIX_COLUMNS[:-1]))
    with pytest.raises(DatasetNotFoundError, match="nofixes.csv does not exist"):
        load_fixes(tmp_path / "nofixes.csv")


def test_samm_header_is_found_below_the_title_rows(tmp_path):
    preamble = [["SAMM Dataset - Master FACS Codes"], [], ['"/" = or'], []]
    header = ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame", "Duration",
              "Micro", "Action Units", "Estimated Emotion", "Objective Classes", "Notes"]
    rows = [header, ["006", "006_1_2", 1, 5562, 5588, 5632, "=F6-D6+1", "Micro - 1/2", "4+7", "Anger", 3, None],
            [7, "007_3_1", 3, 100, 120, 150, None, "Micro - 1/2", 12, "Other", 7, None]]
    df = read_annotations("samm", write_xlsx(tmp_path / "samm.xlsx", rows, title="MICRO_ONLY", preamble=preamble))
    assert df[["subject", "clip", "emotion", "label"]].values.tolist() == [["006", "006_1_2", "anger", 0],
                                                                            ["007", "007_3_1", "others", 4]]
    with pytest.raises(DatasetError, match=r"row 6: emotion 'joy'"):
        read_annotations("samm", write_xlsx(tmp_path / "bad.xlsx", [header, ["006", "006_1_2", 1, 1, 2, 3, None, "",
                                                                              "", "Joy"]], preamble=preamble))


def test_smic_names_follow_the_megc2019_list(tmp_path):
    header = ["data", "subject", "clip", "label", "onset_frame", "apex_frame", "offset_frame"]
    rows = [header, ["smic", 1, "s1_ne_01", 0, 100, 105, 110], ["smic", 20, "s20_sur_02", 2, 7, 9, None]]
    df = read_annotations("smic", write_xlsx(tmp_path / "smic_apex.xlsx", rows), labels="composite")
    assert df[["subject", "clip", "emotion", "label", "issue"]].values.tolist() == [
        ["s01", "s01_ne_01", "negative", 0, ""], ["s20", "s20_sur_02", "surprise", 2, "offset missing"]]
    wrong = [header, ["smic", 2, "s1_ne_01", 0, 100, 105, 110]]
    with pytest.raises(DatasetError, match="row 2: clip 's1_ne_01' does not belong to subject '2'"):
        read_annotations("smic", write_xlsx(tmp_path / "wrong.xlsx", wrong))


def test_casme3_clips_are_video_and_onset(tmp_path):
    rows = [["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class", "emotion"],
            ["spNO.1", "e", "62", "68", "96", "R12", "I", "Others"],
            ["spNO.1", "e", "96", "102", "106", "R12", "I", "happy"],
            ["spNO.14", "J", "1012", "1019", "1038", "14", "VII", "sad"]]
    df = read_annotations("casme3", write_xlsx(tmp_path / "casme3.xlsx", rows, title="label"), labels="casme3-4")
    assert df[["subject", "clip", "video", "emotion", "label"]].values.tolist() == [
        ["spNO.1", "e_62", "e", "others", 3], ["spNO.1", "e_96", "e", "happiness", 1],
        ["spNO.14", "j_1012", "j", "sadness", 0]]


def test_cli_on_a_fake_sheet(tmp_path, capsys):
    sheet = fake_casme2(tmp_path / "casme2.xlsx")
    out = tmp_path / "table.csv"
    assert run_cli(["annotations", "casme2", str(sheet), "--labels", "composite", "--csv", str(out)]) == 0
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(df.columns) == [*COLUMNS, "action_units", "issue", "fix"] and len(df) == 3
    assert "scheme composite: negative 2, positive 1, surprise 0" in capsys.readouterr().out
    assert run_cli(["annotations", "casme2", str(sheet), "--labels", "none", "--no-fixes"]) == 0
    printed = capsys.readouterr().out
    assert "EP08_04" in printed and "4 clips, 2 subjects" in printed
    with pytest.raises(UnknownChoiceError, match="Did you mean 'composite'"):
        run_cli(["annotations", "casme2", str(sheet), "--labels", "composit"])


def test_schemes_and_the_packaged_fixes():
    assert list_schemes("casme3") == ["casme3-3", "casme3-4", "casme3-7"]
    assert list_schemes("samm") == ["composite", "samm-5"]
    assert {n: len(s.classes) for n, s in LABEL_SCHEMES.items()} == {
        "composite": 3, "casme2-5": 5, "samm-5": 5, "smic-3": 3, "casme3-3": 3, "casme3-4": 4, "casme3-7": 7}
    assert LABEL_SCHEMES["composite"].label("samm", "contempt") == 0
    assert LABEL_SCHEMES["composite"].label("casme2", "sadness") is None
    fixes = load_fixes()  # each source dataset's module carries its own fixes (epir.datasets.casme2.FIXES, ...)
    assert (fixes["reason"] != "").all()
    drops = fixes[fixes["action"] == "drop"]
    assert set(zip(drops["subject"], drops["clip"])) == {("sub04", "EP12_01f"), ("sub05", "EP09_05f")}
    assert set(fixes["dataset"]) == {"casme2", "smic", "casme3"}


def test_warnings_are_quiet_for_clean_sheets(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", AnnotationWarning)
        read_annotations("casme2", fake_casme2(tmp_path / "casme2.xlsx"))
