"""The megc2019 loader on fake trees: the happy path, channel order, and bad inputs with precise errors."""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from epir.data import list_datasets, load_dataset
from epir.data.megc2019 import CSV_NAME, ENV_VAR, megc2019
from epir.errors import DatasetError, DatasetNotFoundError
from fakes import CSV_HEADER, DEFAULT_SUBJECTS, csv_row, image_path, make_fake_megc2019, write_flow_png

SMALL = {
    "casme2/sub01": [("EP01_01f", 0), ("EP02_01f", 1)],
    "samm/006": [("006_1_2", 2)],
    "smic/s01": [("s01_po_01", 1)],
}


@pytest.fixture
def small_root(tmp_path: Path) -> Path:
    """A fresh 4-sample fake tree that a test may damage."""
    return make_fake_megc2019(tmp_path / "megc", SMALL)


def csv_lines(root: Path) -> list[str]:
    return (root / CSV_NAME).read_text().splitlines()


def write_csv(root: Path, lines: list[str]) -> None:
    (root / CSV_NAME).write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------ happy path


def test_registered() -> None:
    assert "megc2019" in list_datasets()


def test_loads_the_fake_tree(fake_root: Path) -> None:
    ds = load_dataset("megc2019", root=str(fake_root))
    assert len(ds) == 24 and ds.x.shape == (24, 3, 28, 28)
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert ds.subject_list() == list(DEFAULT_SUBJECTS)
    assert ds.subjects[0] == "casme2/sub01" and ds.subject_ids[0] == "sub01"
    assert ds.subject_ids[8] == "006"  # zero padding kept (the CSV is read as text)
    assert ds.sources.count("smic") == 8
    assert ds.clips[:2] == ["EP01_01f", "EP02_01f"]
    assert ds.y.tolist()[:4] == [0, 1, 2, 0]
    assert ds.class_names == ("negative", "positive", "surprise")
    assert ds.name == "megc2019" and ds.info["root"] == str(fake_root)
    assert float(ds.x.min()) >= 0 and float(ds.x.max()) <= 255


def test_seed_argument_is_ignored_for_a_dataset_on_disk(fake_root: Path) -> None:
    ds = load_dataset("megc2019", root=str(fake_root), seed=3)
    assert len(ds) == 24


def test_root_from_environment(fake_root: Path, monkeypatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(fake_root))
    assert len(megc2019()) == 24


def test_channel_order_u_v_strain_from_r_g_b(tmp_path: Path) -> None:
    """The PNG's red channel is u, green v, blue strain; cv2 reads BGR and the loader reverses it."""
    root = make_fake_megc2019(tmp_path / "megc", {"casme2/sub01": [("EP01_01f", 0)]})
    bgr = np.zeros((28, 28, 3), np.uint8)
    bgr[:, :, 2] = 10  # red
    bgr[:, :, 1] = 20  # green
    bgr[:, :, 0] = 30  # blue
    assert cv2.imwrite(str(image_path(root, "sub01", "EP01_01f")), bgr)
    ds = megc2019(str(root))
    assert (ds.x[:, 0] == 10).all()  # u from R
    assert (ds.x[:, 1] == 20).all()  # v from G
    assert (ds.x[:, 2] == 30).all()  # strain from B


def test_pixel_values_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    uvs = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    root = make_fake_megc2019(tmp_path / "megc", {"smic/s01": [("s01_ne_01", 0)]})
    write_flow_png(image_path(root, "s01", "s01_ne_01"), uvs)
    assert np.array_equal(megc2019(str(root)).x[0].numpy(), uvs.astype(np.float32))


def test_crlf_and_padded_cells(small_root: Path) -> None:
    lines = csv_lines(small_root)
    lines[1] = lines[1].replace("casme2,sub01,EP01_01f,0", "casme2, sub01 ,EP01_01f , 0")
    (small_root / CSV_NAME).write_bytes(("\r\n".join(lines) + "\r\n").encode())
    ds = megc2019(str(small_root))
    assert len(ds) == 4 and ds.subjects[0] == "casme2/sub01" and ds.clips[0] == "EP01_01f"


# ----------------------------------------------------------------------------------------- bad inputs


def test_missing_root_mentions_the_environment_variable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(DatasetNotFoundError, match=ENV_VAR):
        megc2019(None)
    with pytest.raises(DatasetNotFoundError, match=ENV_VAR) as exc:
        megc2019(str(tmp_path / "nowhere"))
    assert "nowhere" in str(exc.value) and CSV_NAME in str(exc.value)
    assert isinstance(exc.value, FileNotFoundError)


def test_missing_image_names_line_and_path(small_root: Path) -> None:
    path = image_path(small_root, "006", "006_1_2")  # CSV line 4 (header is line 1)
    path.unlink()
    with pytest.raises(DatasetNotFoundError) as exc:
        megc2019(str(small_root))
    msg = str(exc.value)
    assert re.search(r"line 4\b", msg)
    assert str(path) in msg


def test_corrupt_image_names_the_file(small_root: Path) -> None:
    path = image_path(small_root, "sub01", "EP02_01f")  # line 3
    path.write_bytes(b"\x89PNG not really an image, just garbage bytes" * 3)
    with pytest.raises(DatasetError) as exc:
        megc2019(str(small_root))
    msg = str(exc.value)
    assert str(path) in msg and re.search(r"line 3\b", msg)
    assert not isinstance(exc.value, DatasetNotFoundError)


def test_grey_image_is_rejected(small_root: Path) -> None:
    path = image_path(small_root, "s01", "s01_po_01")  # line 5
    assert cv2.imwrite(str(path), np.zeros((28, 28), np.uint8))
    with pytest.raises(DatasetError, match=r"line 5\b.*3-channel"):
        megc2019(str(small_root))


def test_images_of_different_sizes_are_rejected(small_root: Path) -> None:
    write_flow_png(image_path(small_root, "s01", "s01_po_01"), np.zeros((3, 14, 14), np.uint8))
    with pytest.raises(DatasetError, match="differ in size"):
        megc2019(str(small_root))


def test_unknown_label_names_the_line(small_root: Path) -> None:
    lines = csv_lines(small_root)
    lines[2] = csv_row("casme2", "sub01", "EP02_01f", 5)  # line 3
    write_csv(small_root, lines)
    with pytest.raises(DatasetError, match=r"line 3\b.*unknown label '5'"):
        megc2019(str(small_root))


def test_unknown_source_names_the_line(small_root: Path) -> None:
    lines = csv_lines(small_root)
    lines[3] = lines[3].replace("samm,", "casme3,")  # line 4
    write_csv(small_root, lines)
    with pytest.raises(DatasetError, match=r"line 4\b.*unknown dataset 'casme3'"):
        megc2019(str(small_root))


def test_duplicate_row_names_both_lines(small_root: Path) -> None:
    lines = csv_lines(small_root)
    lines.append(lines[2])  # line 3 again, as line 6
    write_csv(small_root, lines)
    with pytest.raises(DatasetError, match=r"line 6\b.*duplicate.*first at line 3\b"):
        megc2019(str(small_root))


def test_empty_subject_names_the_line(small_root: Path) -> None:
    lines = csv_lines(small_root)
    lines[4] = "smic,,s01_po_01,1,,,"  # line 5
    write_csv(small_root, lines)
    with pytest.raises(DatasetError, match=r"line 5\b"):
        megc2019(str(small_root))


def test_missing_column(small_root: Path) -> None:
    lines = [line.rsplit(",", 4)[0].rsplit(",", 1)[0] for line in csv_lines(small_root)]  # drop label..end
    write_csv(small_root, lines)
    with pytest.raises(DatasetError, match=r"missing column.*label"):
        megc2019(str(small_root))


def test_header_only(small_root: Path) -> None:
    write_csv(small_root, [CSV_HEADER])
    with pytest.raises(DatasetError, match="no rows"):
        megc2019(str(small_root))


def test_line_numbers_count_blank_lines(small_root: Path) -> None:
    lines = csv_lines(small_root)
    lines.insert(2, "")  # a blank line 3; the casme2 EP02_01f row moves to line 4
    lines[3] = csv_row("casme2", "sub01", "EP02_01f", 7)
    write_csv(small_root, lines)
    with pytest.raises(DatasetError, match=r"line 4\b"):
        megc2019(str(small_root))
