"""Index and manifest parsing, and the up-front probe on real files."""

import os

import pytest
from conftest import gradient_frames
from PIL import Image

from loader.decode import count_frames
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
    usable, skipped, frames = probe(bad[:2] + good + bad[2:], workers=3, progress=False)
    assert usable == good
    assert frames == [count_frames(p) for p, _ in good]  # the header's count is the decoder's here
    assert {(s.path, s.kind) for s in skipped} == {
        (bad[0][0], "empty"), (bad[1][0], "unreadable"), (bad[2][0], "empty"), (bad[3][0], "missing"),
    }
    assert all(s.reason for s in skipped)


def test_the_cheap_probe_trusts_the_header_and_the_thorough_one_decodes_the_last_frame(tmp_path):
    from conftest import lying_clip

    cut = tmp_path / "cut.mp4"
    clip = tmp_path / "whole.mp4"
    clip.write_bytes(lying_clip(cut))  # the header still says 12 frames
    items = [(str(clip), 0), (str(cut), 0)]
    usable, skipped, frames = probe(items, workers=2, progress=False)
    assert usable == items and frames == [12, 12]  # caught when loaded, like any bad clip
    usable, skipped, _ = probe(items, workers=2, progress=False, check="decode")
    assert usable == items[:1] and [s.kind for s in skipped] == ["truncated"]


def test_known_frame_counts_need_no_probe(tmp_path):
    items = [(str(tmp_path / "never_looked_at"), 0)]  # not even on disk: a list's total_frames is trusted
    assert probe(items, progress=False, known={items[0][0]: 7}) == (items, [], [7])


def test_the_probe_logs_progress_and_reports_it_to_the_metric(tmp_path, monkeypatch, caplog):
    """Without a terminal, progress lines say done/total, the rate and the time left; the index
    metric follows (a fake probe: 3000 clips in milliseconds)."""
    import loader.index

    def fake_count(path, check_last, template):
        return 5

    class Progress:
        seen = []

        def set_index_progress(self, done, total):
            self.seen.append((done, total))

    monkeypatch.setattr(loader.index, "count_frames", fake_count)
    monkeypatch.setattr(loader.index, "PROGRESS_EVERY_S", 0.0)
    caplog.set_level("INFO", logger="vidtrain")
    items = [(f"/clips/{k}.mp4", k % 3) for k in range(3000)]
    usable, skipped, frames = probe(items, workers=4, progress=False, metrics=Progress())
    assert usable == items and frames == [5] * 3000 and not skipped
    assert Progress.seen[0] == (0, 3000) and Progress.seen[-1] == (3000, 3000)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("indexing: ")]
    assert lines and all(" / 3000 clips (" in line and "s left)" in line for line in lines)


def test_frame_templates_read_rgb_frames_beside_optical_flow(tmp_path):
    """MMAction2's frame extraction: img_ RGB frames beside flow_x_/flow_y_ (or x_/y_) images."""
    from loader.decode import frame_files

    folder = tmp_path / "clip"
    folder.mkdir()
    for k in range(1, 11):
        for prefix in ("img_", "x_", "y_", "flow_x_"):
            Image.fromarray(gradient_frames(1)[0]).save(folder / f"{prefix}{k:05d}.jpg")
    assert [p.name for p in frame_files(folder)] == [f"img_{k:05d}.jpg" for k in range(1, 11)]  # not 40 images
    assert [p.name for p in frame_files(folder, "x_{:05d}.jpg")] == [f"x_{k:05d}.jpg" for k in range(1, 11)]
    assert count_frames(folder, check_last=False) == 10
    plain = tmp_path / "plain"
    plain.mkdir()
    for k in (2, 10, 1):
        Image.fromarray(gradient_frames(1)[0]).save(plain / f"{k}.png")
    assert [p.name for p in frame_files(plain)] == ["1.png", "2.png", "10.png"]  # every image, natural order
    assert [p.name for p in frame_files(plain, "{:05d}.jpg")] == []


def test_a_folder_the_template_leaves_empty_is_empty_at_probe_and_at_decode(tmp_path):
    from loader import VideoSequence

    folder = tmp_path / "flow_only"
    folder.mkdir()
    for k in range(1, 4):
        Image.fromarray(gradient_frames(1)[0]).save(folder / f"flow_x_{k:05d}.jpg")
    _, skipped, _ = probe([(str(folder), 0)], progress=False, template="img_{:05d}.jpg")
    assert [s.kind for s in skipped] == ["empty"] and "img_{:05d}.jpg" in skipped[0].reason

    class Kinds:
        kinds = []

        def count_skip(self, kind):
            self.kinds.append(kind)

    seq = VideoSequence([(str(folder), 0)] * 2, 2, 2, (16, 16), frame_template="img_{:05d}.jpg", metrics=Kinds())
    with pytest.raises(Exception):
        seq[0]  # nothing else to stand in for it
    assert Kinds.kinds == ["empty"] and seq.skipped[0].kind == "empty"


@pytest.mark.parametrize("template, message", [
    ("img.jpg", "exactly one number field"), ("img_{}_{}.jpg", "exactly one number field"),
    ("img_{name}.jpg", "exactly one number field"), ("img_{:s}.jpg", "must format a frame number"),
])
def test_a_bad_frame_template_is_refused_naming_it(template, message):
    from loader.paths import template_pattern

    with pytest.raises(ValueError, match=message):
        template_pattern(template)


def test_the_index_round_trips_and_refuses_a_damaged_file(tmp_path):
    from loader import DatasetIndex, Skipped

    items = [("/x/1.mp4", 0), ("/x/2.mp4", 1), ("/x/3.mp4", 0)]
    index = DatasetIndex(["a", "b"], items, None, {"data_dir": "/x"}, "f00", {"/x/1.mp4": 30, "/x/2.mp4": 31},
                         [Skipped("/x/3.mp4", "empty file", "empty", 0)], [], True)
    path = index.write(tmp_path / "index")
    assert path.stat().st_mode & 0o777 == 0o644 and not list(path.parent.glob(".tmp-*"))
    assert DatasetIndex.read(tmp_path / "index") == index
    assert DatasetIndex.read(tmp_path / "nowhere") is None
    assert index.usable(items) == items[:2]
    path.write_text('{"version": 2, "cla')
    with pytest.raises(ValueError, match="index.json cannot be read"):
        DatasetIndex.read(tmp_path / "index")
