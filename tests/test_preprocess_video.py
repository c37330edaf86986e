"""read_frames: frame folders (natural order) and video files give the same frames; every bad input its ClipError."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from epir.errors import DatasetError
from epir.preprocess import ClipError, MissingFrameError, UnreadableImageError, read_frames
from epir.preprocess.video import FrameSequence, frame_number, list_frames
from fakes_preprocess import clip_frames, write_avi, write_frames


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return clip_frames(4, 5, 3)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, frames) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    # written out of order, with numbers that sort wrongly as text: img9 < img10 < img11 ...
    write_frames(folder, frames, [f"img{n}.png" for n in (9, 10, 11, 12, 100)])
    (folder / "notes.txt").write_text("not a frame")
    return folder


def test_frame_numbers_are_the_last_number_in_the_name() -> None:
    assert frame_number("img46.jpg") == 46
    assert frame_number("reg_img46.jpg") == 46
    assert frame_number("006_05562.jpg") == 5562
    assert frame_number("image586389.bmp") == 586389
    assert frame_number("0.jpg") == 0
    assert frame_number("cover.jpg") is None


def test_folder_frames_in_natural_order(clip_dir: Path, frames) -> None:
    assert [p.name for p in list_frames(clip_dir)] == ["img9.png", "img10.png", "img11.png", "img12.png", "img100.png"]
    got = read_frames(clip_dir)
    assert len(got) == 5 and all(np.array_equal(a, b) for a, b in zip(got, frames))
    picked = read_frames(clip_dir, indices=[4, 0])
    assert np.array_equal(picked[0], frames[4]) and np.array_equal(picked[1], frames[0])


def test_video_and_folder_give_the_same_frames(tmp_path: Path, clip_dir: Path, frames) -> None:
    video = write_avi(tmp_path / "clip.avi", frames)
    from_video, from_folder = read_frames(video), read_frames(clip_dir)
    assert len(from_video) == len(from_folder) == 5
    for a, b in zip(from_video, from_folder):
        assert a.shape == b.shape and a.dtype == np.uint8
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 3.0  # MJPG is lossy, the frames are the same
    assert np.array_equal(read_frames(video, indices=[3])[0], from_video[3])


def test_frame_sequence_reads_lazily(clip_dir: Path, frames) -> None:
    seq = FrameSequence(list_frames(clip_dir), keep=2)
    assert len(seq) == 5 and np.array_equal(seq[-1], frames[4]) and len(seq._cache) == 1
    assert [np.array_equal(a, b) for a, b in zip(seq, frames)] == [True] * 5
    assert len(seq._cache) == 2


# ------------------------------------------------------------------------------------------- bad inputs


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(MissingFrameError, match=r"nowhere\.avi does not exist.*video file or a folder"):
        read_frames(tmp_path / "nowhere.avi")


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(ClipError, match="holds no image files") as e:
        read_frames(tmp_path)
    assert isinstance(e.value, DatasetError) and e.value.kind == "bad clip"


def test_unreadable_image(tmp_path: Path, frames) -> None:
    write_frames(tmp_path, frames[:2], ["img1.png", "img2.png"])
    (tmp_path / "img3.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(UnreadableImageError, match=r"img3\.jpg cannot be read as an image") as e:
        read_frames(tmp_path)
    assert e.value.kind == "unreadable image"
    assert len(read_frames(tmp_path, indices=[0, 1])) == 2  # only the frames asked for are read


def test_video_that_cannot_be_opened(tmp_path: Path) -> None:
    bad = tmp_path / "broken.avi"
    bad.write_bytes(b"RIFF not really a video")
    with pytest.raises(UnreadableImageError, match=r"broken\.avi cannot be opened"):
        read_frames(bad)


@pytest.mark.parametrize("kind", ["folder", "video"])
def test_index_beyond_the_clip(kind: str, tmp_path: Path, clip_dir: Path, frames) -> None:
    path = clip_dir if kind == "folder" else write_avi(tmp_path / "c.avi", frames)
    with pytest.raises(ClipError, match=r"index 7 is beyond the clip.*5 frames \(indices 0-4\)"):
        read_frames(path, indices=[0, 7])
    with pytest.raises(ClipError, match="-1"):
        read_frames(path, indices=[-1])
