"""Public datasets' annotation files, each in its published layout with real encoded clips."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from jobs import job, settings

from loader import ManifestError, probe, read_manifest
from loader.demo import render_clip, write_video
from vidtrain.job import EXIT_OK


def clip(path, codec="libx264", seed=0):
    """A real encoded clip (12 frames of 32x32) at `path`, or a folder of JPEG frames for a path
    without a suffix."""
    from PIL import Image

    frames = render_clip("swipe_left", np.random.default_rng(seed))[:12, :32, :32]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix:
        write_video(path, frames, codec=codec, pix_fmt="yuv420p")
    else:
        path.mkdir()
        for k, frame in enumerate(frames, 1):
            Image.fromarray(frame).save(path / f"{k:05d}.jpg")
    return path


def probed(items):
    """(usable clips, skip kinds) when the real probe opens `items`."""
    good, skipped, _ = probe(items, workers=2)
    return len(good), [s.kind for s in skipped]


def names(items, root):
    return [(str(Path(p).relative_to(root)), label) for p, label in items]


def test_ucf101_split_lists_with_class_index(tmp_path, info_logs, caplog):
    lists, videos = tmp_path / "ucfTrainTestlist", tmp_path / "UCF-101"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n3 BabyCrawling\n")
    (lists / "trainlist01.txt").write_text("Archery/v_Archery_g08_c01.avi 2\r\n"
                                          "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
                                          "BabyCrawling/v_BabyCrawling_g08_c01.avi 3\r\n")
    (lists / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n"
                                         "Archery/v_Archery_g01_c01.avi\n")
    for name in ("Archery/v_Archery_g08_c01", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01",
                 "BabyCrawling/v_BabyCrawling_g08_c01", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01"):
        clip(videos / f"{name}.avi", codec="mpeg4")
    items, classes = read_manifest(lists / "trainlist01.txt", videos)
    assert classes == ["ApplyEyeMakeup", "Archery", "BabyCrawling"]  # classInd's order
    assert names(items, videos) == [("Archery/v_Archery_g08_c01.avi", 1),
                                    ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0),
                                    ("BabyCrawling/v_BabyCrawling_g08_c01.avi", 2)]
    assert "read as UCF101/HMDB51 split list: 3 train clips, 3 classes" in caplog.text
    test_items, test_classes = read_manifest(lists / "testlist01.txt", videos)
    assert test_classes == classes and [label for _, label in test_items] == [0, 1]
    good, skipped, _ = probe(test_items, workers=2)  # one test clip was never downloaded
    assert len(good) == 1 and [(s.kind, s.path) for s in skipped] == [
        ("missing", str(videos / "Archery/v_Archery_g01_c01.avi"))]


@pytest.mark.parametrize("row, message", [
    ("Archery/v.avi 1", "label '1' is not 'Archery''s index in classInd.txt"),
    ("Bowling/v.avi", "class 'Bowling' is not in classInd.txt"),
    ("v_Archery.avi 2", "expected 'Class/clip.avi [index]'"),
])
def test_ucf101_malformed_rows_name_file_and_line(tmp_path, row, message):
    (tmp_path / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (tmp_path / "trainlist01.txt").write_text(f"Archery/v_Archery_g08_c01.avi 2\n{row}\n")
    with pytest.raises(ManifestError, match=re.escape(f"trainlist01.txt, line 2: {message}")):
        read_manifest(tmp_path / "trainlist01.txt")


def test_hmdb51_official_split_files(tmp_path, info_logs, caplog):
    splits, videos = tmp_path / "testTrainMulti_7030_splits", tmp_path / "hmdb51"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \n"
                                                       "Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi 2 \n"
                                                       "brush_my_hair_brush_hair_u_nm_np1_fr_goo_0.avi 0 \n")
    (splits / "cartwheel_test_split1.txt").write_text("Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_ba_bad_8.avi 1 \n"
                                                      "Bodenturnen_cartwheel_f_cm_np1_le_med_0.avi 2 \n")
    (splits / "cartwheel_test_split2.txt").write_text("Bodenturnen_cartwheel_f_cm_np1_le_med_0.avi 1 \n")
    clip(videos / "brush_hair" / "April_09_brush_hair_u_nm_np1_ba_goo_0.avi", codec="mpeg4")
    train, classes = read_manifest(splits / "cartwheel_test_split1.txt", videos)  # any file of the split
    assert classes == ["brush_hair", "cartwheel"]
    assert names(train, videos) == [("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 0),
                                    ("cartwheel/Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_ba_bad_8.avi", 1)]
    assert "read as HMDB51 official split files: 2 train clips, 2 classes" in caplog.text
    val, _ = read_manifest(splits / "brush_hair_test_split1.txt", videos, role="val")
    assert names(val, videos) == [("brush_hair/Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi", 0),
                                  ("cartwheel/Bodenturnen_cartwheel_f_cm_np1_le_med_0.avi", 1)]
    assert probed(train) == (1, ["missing"])
    (splits / "cartwheel_test_split1.txt").write_text("Acrobacias.avi 1\nBodenturnen.avi train\n")
    with pytest.raises(ManifestError, match=r"cartwheel_test_split1.txt, line 2: expected 'clip.avi 0\|1\|2'"):
        read_manifest(splits / "brush_hair_test_split1.txt", videos)


def test_ssv2_json_with_labels_file(tmp_path, info_logs, caplog):
    videos = tmp_path / "20bn-something-something-v2"
    (tmp_path / "something-something-v2-labels.json").write_text(json.dumps(
        {"Putting something on a surface": "1", "Pushing something from left to right": "0"}))
    entries = [{"id": "78687", "label": "putting a cup on a table", "template": "Putting [something] on a surface",
                "placeholders": ["a cup"]},
               {"id": "42326", "label": "pushing a pen from left to right",
                "template": "Pushing [something] from left to right", "placeholders": ["a pen"]}]
    (tmp_path / "something-something-v2-train.json").write_text(json.dumps(entries, indent=1))
    for entry in entries:
        clip(videos / f"{entry['id']}.webm", codec="libvpx-vp9")
    items, classes = read_manifest(tmp_path / "something-something-v2-train.json", videos)
    assert classes == ["Pushing something from left to right", "Putting something on a surface"]
    assert names(items, videos) == [("78687.webm", 1), ("42326.webm", 0)]
    assert "read as Something-Something-v2 JSON" in caplog.text
    assert probed(items) == (2, [])
    entries.append({"id": "1", "placeholders": []})  # a test-split entry: no template
    (tmp_path / "something-something-v2-train.json").write_text(json.dumps(entries, indent=1))
    with pytest.raises(ManifestError, match=r"train.json, line 18: entry 2 needs an 'id' and a 'template'"):
        read_manifest(tmp_path / "something-something-v2-train.json", videos)


def test_kinetics_csv_finds_clips_flat_or_per_class(tmp_path, info_logs, caplog):
    videos = tmp_path / "kinetics400" / "train"
    (tmp_path / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,--07WQ2iBlw,1,11,train\n"
        "air drumming,-VtLx-mcPds,14,24,train\n"
        "abseiling,-3B32lodo2M,59,69,train\n")
    clip(videos / "abseiling" / "--07WQ2iBlw_000001_000011.mp4")   # per class
    clip(videos / "-VtLx-mcPds_000014_000024.mkv")                  # flat, another extension
    items, classes = read_manifest(tmp_path / "train.csv", videos)
    assert classes == ["abseiling", "air drumming"]
    assert names(items, videos) == [("abseiling/--07WQ2iBlw_000001_000011.mp4", 0),
                                    ("-VtLx-mcPds_000014_000024.mkv", 1), ("-3B32lodo2M_000059_000069.mp4", 0)]
    assert "read as Kinetics CSV: 3 train clips, 2 classes" in caplog.text
    assert probed(items) == (2, ["missing"])  # the third was never downloaded: reported, not lost
    (tmp_path / "bad.csv").write_text("label,youtube_id,time_start,time_end,split\nabseiling,x,one,11,train\n")
    with pytest.raises(ManifestError, match=r"bad.csv, line 2: time_start/time_end must be numbers"):
        read_manifest(tmp_path / "bad.csv", videos)


def test_jester_csv_of_frame_folders_with_labels_file(tmp_path, info_logs, caplog):
    frames = tmp_path / "20bn-jester-v1"
    (tmp_path / "jester-v1-labels.csv").write_text("Swiping Left\nSwiping Right\nStop Sign\n")
    (tmp_path / "jester-v1-train.csv").write_text("34870;Stop Sign\n56557;Swiping Left\n")
    for folder in ("34870", "56557"):
        clip(frames / folder)
    items, classes = read_manifest(tmp_path / "jester-v1-train.csv", frames)
    assert classes == ["Swiping Left", "Swiping Right", "Stop Sign"]  # the labels file's order
    assert names(items, frames) == [("34870", 2), ("56557", 0)]
    assert "read as Jester CSV" in caplog.text
    assert probed(items) == (2, [])
    (tmp_path / "jester-v1-validation.csv").write_text("9223;Drumming Fingers\n")
    with pytest.raises(ManifestError, match=r"validation.csv, line 1: class 'Drumming Fingers' is not in"):
        read_manifest(tmp_path / "jester-v1-validation.csv", frames)


def test_mmaction2_video_and_rawframe_lists(tmp_path, info_logs, caplog):
    root = tmp_path / "data"
    clip(root / "videos" / "a.mp4")
    clip(root / "videos" / "b.mp4")
    clip(root / "rawframes" / "a")
    (tmp_path / "train_list_videos.txt").write_text("videos/a.mp4 2\nvideos/b.mp4 0\n")
    (tmp_path / "train_list_rawframes.txt").write_text("rawframes/a 12 1\n")
    items, classes = read_manifest(tmp_path / "train_list_videos.txt", root)
    assert classes == ["0", "2"] and names(items, root) == [("videos/a.mp4", 1), ("videos/b.mp4", 0)]
    assert "read as MMAction2 video list" in caplog.text
    items, classes = read_manifest(tmp_path / "train_list_rawframes.txt", root)
    assert classes == ["1"] and names(items, root) == [("rawframes/a", 0)]
    assert probed(items) == (1, [])
    (tmp_path / "bad.txt").write_text("videos/a.mp4 2\nvideos/b.mp4 two\n")
    with pytest.raises(ManifestError, match=r"bad.txt, line 2: expected 'path label_index'"):
        read_manifest(tmp_path / "bad.txt", root)


def test_a_rawframe_lists_total_frames_are_the_index_frame_counts_without_a_probe(tmp_path, monkeypatch):
    """MMAction2's own layout: img_ RGB frames beside x_/y_ flow in each folder; its list gives
    total_frames, which the index takes as they are (no clip is opened)."""
    import loader.index
    from loader import list_clips

    root = tmp_path / "rawframes"
    for name in ("a", "b"):
        folder = clip(root / name)
        for k in range(1, 13):  # flow images beside the RGB frames, as MMAction2's extraction writes them
            (folder / f"{k:05d}.jpg").rename(folder / f"img_{k:05d}.jpg")
            for flow in ("x_", "y_"):
                (folder / f"{flow}{k:05d}.jpg").write_bytes((folder / f"img_{k:05d}.jpg").read_bytes())
    (tmp_path / "list.txt").write_text("a 12 0\nb 12 1\n")
    listing = list_clips(tmp_path / "list.txt", root)
    assert listing.frames == {str(root / "a"): 12, str(root / "b"): 12}

    def no_probe(*args):
        raise AssertionError("a clip was probed")

    monkeypatch.setattr(loader.index, "count_frames", no_probe)
    usable, skipped, frames = probe(listing.items, known=listing.frames, progress=False)
    assert frames == [12, 12] and not skipped
    from loader import VideoSequence

    x, _ = VideoSequence(listing.items, 2, 4, (32, 32), test_mode=True)[0]
    assert x.shape == (2, 4, 32, 32, 3)  # RGB frames only: 12 of them, not 36


def test_an_unknown_format_is_named(tmp_path):
    (tmp_path / "list.txt").write_text("a b c d\n")
    with pytest.raises(ManifestError, match=r"list.txt, line 1: unrecognised annotation format"):
        read_manifest(tmp_path / "list.txt")


@pytest.mark.slow
def test_the_job_trains_on_a_ucf101_split_with_video_root(tmp_path, tiny_demo):
    """End to end: TRAIN_MANIFEST/VAL_MANIFEST name UCF101-style lists, VIDEO_ROOT the clips."""
    lists, videos = tmp_path / "lists", tmp_path / "UCF-101"
    lists.mkdir()
    classes = sorted(p.name for p in (tiny_demo / "train").iterdir())
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)))
    for split, name in (("train", "trainlist01.txt"), ("val", "testlist01.txt")):
        rows = []
        for i, c in enumerate(classes, 1):
            for v in sorted((tiny_demo / split / c).iterdir()):
                (videos / c).mkdir(parents=True, exist_ok=True)
                (videos / c / f"v_{split}_{v.name}").symlink_to(v)
                rows.append(f"{c}/v_{split}_{v.name}" + (f" {i}" if split == "train" else ""))
        (lists / name).write_text("\n".join(rows) + "\n")
    s = settings(None, tmp_path / "out", data_dir=None, train_manifest=lists / "trainlist01.txt",
                 val_manifest=lists / "testlist01.txt", video_root=videos, epochs=1)
    code, _ = job(s)
    assert code == EXIT_OK
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["class_names"] == classes
    assert (report["dataset"]["train_clips"], report["dataset"]["val_clips"]) == (10, 5)
