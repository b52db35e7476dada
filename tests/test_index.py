"""Index and manifest parsing, and the up-front probe on real files."""

import os

import pytest
from conftest import gradient_frames
from PIL import Image

from loader.index import ManifestError, find_videos, probe, read_manifest


def test_find_videos_sorted_classes_and_clips(demo_root):
    items, classes = find_videos(demo_root / "train")
    assert classes == ["move_down", "move_up", "stop", "swipe_left", "swipe_right"]
    assert len(items) == 20
    assert [label for _, label in items] == sorted(label for _, label in items)
    assert all(os.path.basename(p).startswith(classes[label]) for p, label in items)


def test_find_videos_takes_frame_folders_and_ignores_hidden(tmp_path):
    (tmp_path / "a" / "clip1").mkdir(parents=True)
    (tmp_path / "a" / ".DS_Store").write_text("")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.mp4").write_bytes(b"")
    items, classes = find_videos(tmp_path)
    assert classes == ["a", "b"]
    assert items == [(str(tmp_path / "a" / "clip1"), 0), (str(tmp_path / "b" / "x.mp4"), 1)]


def test_find_videos_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        find_videos(tmp_path / "nope")


def test_manifest_path_label_sorted_classes(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "m.csv").write_text("path;label\nclips/b.mp4;zebra\n\n/abs/a.mp4;ant\n")
    items, classes = read_manifest(tmp_path / "m.csv")
    assert classes == ["ant", "zebra"]
    assert items == [(str(tmp_path / "clips" / "b.mp4"), 1), ("/abs/a.mp4", 0)]


def test_manifest_index_column_fixes_class_order_and_resolves_named_folder(tmp_path):
    """The common gesture-recognition layout: train.csv rows name folders under train/."""
    (tmp_path / "train" / "WIN_1").mkdir(parents=True)
    (tmp_path / "train" / "WIN_2").mkdir(parents=True)
    (tmp_path / "train" / "WIN_3").mkdir(parents=True)
    (tmp_path / "train.csv").write_text("WIN_1;Thumbs Up_new;3\nWIN_2;Left Swipe_new;0\nWIN_3;Stop_new;2\n")
    items, classes = read_manifest(tmp_path / "train.csv")
    assert classes == ["Left Swipe_new", "Stop_new", "Thumbs Up_new"]
    assert items == [
        (str(tmp_path / "train" / "WIN_1"), 2),
        (str(tmp_path / "train" / "WIN_2"), 0),
        (str(tmp_path / "train" / "WIN_3"), 1),
    ]


@pytest.mark.parametrize("header", ["", "path;label\n", "Path;Label\n"])
def test_a_spreadsheet_export_with_a_byte_order_mark_reads_like_plain_utf8(tmp_path, header):
    (tmp_path / "m.csv").write_bytes(("\ufeff" + header + "a.mp4;stop\nb.mp4;swipe_left\n").encode("utf-8"))
    items, classes = read_manifest(tmp_path / "m.csv")
    assert classes == ["stop", "swipe_left"] and [p.rsplit("/", 1)[1] for p, _ in items] == ["a.mp4", "b.mp4"]


def test_a_repeated_row_counts_once_and_one_clip_under_two_labels_names_both_lines(tmp_path, caplog):
    (tmp_path / "m.csv").write_text("a.mp4;stop\nb.mp4;up\n./a.mp4;stop\n")
    items, _ = read_manifest(tmp_path / "m.csv")
    assert len(items) == 2 and f"line 3: {tmp_path / 'a.mp4'} repeats line 1" in caplog.text
    (tmp_path / "m.csv").write_text("a.mp4;stop\nb.mp4;up\na.mp4;up\n")
    with pytest.raises(ManifestError, match=r"line 3: /\S+/a.mp4 is labelled 'up' here and 'stop' on line 1"):
        read_manifest(tmp_path / "m.csv")


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("a.mp4;x\nb.mp4\n", 2, "expected 'path;label' or 'path;label;index'"),
        ("a.mp4;x;1;extra\n", 1, "expected 'path;label'"),
        ("a.mp4;\n", 1, "empty path or label"),
        ("a.mp4;x;one\n", 1, "class index must be an integer, got 'one'"),
        ("a.mp4;x;-1\n", 1, "class index must be >= 0, got -1"),
        ("a.mp4;x;0\nb.mp4;y;0\n", 2, "label 'y' with index 0 contradicts"),
        ("a.mp4;x;0\nb.mp4;x;1\n", 2, "label 'x' with index 1 contradicts"),
        ("a.mp4;x;0\nb.mp4;y\n", 1, "some rows have a class index and some do not"),
    ],
)
def test_bad_manifest_rows_name_the_line(tmp_path, text, line, message):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path / "m.csv")
    assert info.value.line == line and message in str(info.value) and f"line {line}" in str(info.value)


@pytest.fixture
def mixed_folder(tmp_path, make_video):
    """A class folder with good clips and every kind of bad file."""
    good = [make_video(f"good{k}", seed=k) for k in range(3)]
    one = make_video("one_frame", gradient_frames(1))
    frames = tmp_path / "frames_clip"
    frames.mkdir()
    for k, frame in enumerate(gradient_frames(5)):
        Image.fromarray(frame).save(frames / f"{k}.jpg")
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "garbage.mp4").write_bytes(b"\x00not a video" * 100)
    (tmp_path / "no_frames").mkdir()
    items = [(str(p), 0) for p in good + [one, frames]]
    bad = [(str(tmp_path / n), 1) for n in ("empty.mp4", "garbage.mp4", "no_frames", "missing.mp4")]
    return items, bad


def test_probe_excludes_bad_files_with_reasons_and_keeps_order(mixed_folder, tmp_path):
    good, bad = mixed_folder
    usable, skipped = probe(bad[:2] + good + bad[2:], workers=3, progress=False)
    assert usable == good
    assert {(s.path, s.kind) for s in skipped} == {
        (bad[0][0], "empty"), (bad[1][0], "unreadable"), (bad[2][0], "empty"), (bad[3][0], "missing"),
    }
    assert all(s.reason for s in skipped)


def test_probe_cache_reuses_results_and_notices_changes(mixed_folder, tmp_path, make_video):
    good, bad = mixed_folder
    cache = tmp_path / "cache" / "probe.json"
    first = probe(good + bad, workers=2, cache_file=cache, progress=False)
    assert cache.exists()
    assert probe(good + bad, workers=2, cache_file=cache, progress=False) == first
    # Replace a bad file with a good one: size and mtime change, so it is probed again.
    os.replace(make_video("fixed", seed=9), bad[1][0])
    usable, skipped = probe(good + bad, workers=2, cache_file=cache, progress=False)
    assert bad[1][0] in [p for p, _ in usable] and len(skipped) == len(first[1]) - 1


def test_probe_survives_a_damaged_cache(mixed_folder, tmp_path):
    good, _ = mixed_folder
    cache = tmp_path / "probe.json"
    cache.write_text("{not json")
    assert probe(good, cache_file=cache, progress=False)[0] == good
