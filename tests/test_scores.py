"""Evaluation scores: multi-clip averaging, top-k, per-class table, against hand computations;
the confusion-matrix figure."""

import numpy as np
import pytest

from vidtrain.report import final_scores, plot_confusion, scores


def logits_of(probs):
    return np.log(np.asarray(probs, np.float64))


def test_multi_clip_averaging_against_a_hand_computation():
    # two videos of 3 classes, two clips each (consecutive)
    probs = [[0.6, 0.3, 0.1], [0.1, 0.5, 0.4],   # video 0, true class 1: mean [0.35, 0.4, 0.25] -> 1
             [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]]   # video 1, true class 0: mean [0.35, 0.3, 0.35] -> 0 (first max)
    labels = np.array([1, 1, 0, 0])
    s = scores(logits_of(probs), labels, clips_per_video=2)
    assert s["clips"] == 4 and s["videos"] == 2
    assert s["clip_accuracy"] == pytest.approx(2 / 4)  # clips 1 and 3 right
    assert s["video_accuracy"] == s["accuracy"] == pytest.approx(1.0)
    assert s["loss"] == pytest.approx(-np.mean(np.log([0.3, 0.5, 0.2, 0.5])))
    assert s["top_k"] == 3 and s["top5_accuracy"] == 1.0
    assert s["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    one = scores(logits_of(probs), labels, clips_per_video=1)  # each clip its own video
    assert one["video_accuracy"] == one["clip_accuracy"] == pytest.approx(0.5)


def test_tallies_of_disjoint_videos_add_up_to_the_tally_of_all():
    """What two workers' shards of a validation set give, summed, is what one process gives."""
    from vidtrain.report import scores_of, tally

    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(30, 7)), np.repeat(rng.integers(0, 7, 10), 3)  # 10 videos x 3 views
    kept = np.ones(10, bool)
    kept[4] = False
    whole = scores(logits, labels, 3, kept)
    shards = [np.arange(10) % 2 == w for w in range(2)]  # every other video, as the workers' shards
    parts = [tally(logits[np.repeat(s, 3)], labels[np.repeat(s, 3)], 3, kept[s]) for s in shards]
    summed = scores_of(parts[0] + parts[1], 3)
    assert summed.keys() == whole.keys()
    for key, value in whole.items():
        assert summed[key] == (pytest.approx(value) if isinstance(value, float) else value), key


def test_per_class_numbers_on_a_known_confusion():
    # 6 classes so that top-5 is not trivially 1; true classes and one-hot-ish predictions
    true = [0, 0, 0, 0, 1, 1, 2, 2, 2, 3]
    pred = [0, 0, 0, 1, 1, 0, 2, 2, 1, 0]
    logits = np.full((len(true), 6), -5.0)
    logits[np.arange(len(true)), pred] = 5.0
    logits[9, [1, 2, 4, 5, 0]] = [4, 3, 2, 1, 5]  # clip 9: true 3 is the 6th choice, out of the top 5
    s = scores(logits, np.array(true))
    table = s["per_class"]
    # class 0: predicted 5 times (clips 0, 1, 2, 5, 9), right 3 -> precision 3/5; recall 3/4
    assert table["precision"][0] == pytest.approx(3 / 5) and table["recall"][0] == pytest.approx(3 / 4)
    assert table["f1"][0] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    # class 1: predicted by clips 3, 4, 8 -> 1 right of 3; recall 1/2
    assert table["precision"][1] == pytest.approx(1 / 3) and table["recall"][1] == pytest.approx(1 / 2)
    assert table["recall"][2] == pytest.approx(2 / 3) and table["precision"][2] == pytest.approx(1.0)
    assert table["recall"][3] == 0 and table["precision"][3] == 0 and table["f1"][3] == 0
    assert table["support"] == [4, 2, 3, 1, 0, 0]
    assert s["mean_class_accuracy"] == pytest.approx(np.mean([3 / 4, 1 / 2, 2 / 3, 0]))  # classes with clips
    assert s["accuracy"] == pytest.approx(6 / 10)
    assert s["top_k"] == 5 and s["top5_accuracy"] == pytest.approx(9 / 10)
    report = final_scores(s, [f"c{i}" for i in range(6)])
    assert report["per_class"]["c1"] == {"precision": pytest.approx(1 / 3), "recall": 0.5,
                                         "f1": pytest.approx(0.4), "support": 2}
    assert report["final"]["top5_accuracy"] == s["top5_accuracy"] and report["final"]["eval_clips"] == 1


@pytest.mark.parametrize("classes", [5, 120])
def test_confusion_matrix_png(tmp_path, classes):
    from PIL import Image

    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 4, (classes, classes)) + np.eye(classes, dtype=int) * 20
    names = [f"class_with_a_long_name_{i}" for i in range(classes)]
    plot_confusion(tmp_path / "cm.png", confusion.tolist(), names)
    with Image.open(tmp_path / "cm.png") as image:
        width, height = image.size
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10  # something is drawn
    assert min(width, height) >= (400 if classes == 5 else 100 * 0.3 * 100)  # grows with the classes
    assert (tmp_path / "cm.png").stat().st_mode & 0o777 == 0o644


def test_a_video_failing_mid_evaluation_is_left_out_not_scored_with_another_videos_clips(tmp_path):
    from conftest import gradient_frames

    from loader import VideoSequence
    from loader.demo import write_video
    from vidtrain.report import evaluate, scores_of

    items = []
    for k in range(3):
        write_video(tmp_path / f"{k}.mp4", gradient_frames(t=12), codec="libx264", pix_fmt="yuv420p")
        items.append((str(tmp_path / f"{k}.mp4"), k))
    (tmp_path / "1.mp4").write_bytes(b"broken after the probe")  # its slots get video 2's clips
    seq = VideoSequence(items, batch_size=4, frames=2, size=(48, 64), clips_per_video=2, test_mode=True)

    def predict(x):  # class 2 for every clip
        return np.tile([0.0, 0.0, 5.0], (len(x), 1))

    s = scores_of(evaluate(None, seq, workers=1, depth=2, predict=predict, num_classes=3), 2)
    assert [sk.path for sk in seq.skipped] == [items[1][0]]
    assert (s["videos"], s["clips"]) == (2, 4)  # video 1 left out, its two slots with it
    assert s["per_class"]["support"] == [1, 0, 1]
    assert s["confusion_matrix"] == [[0, 0, 1], [0, 0, 0], [0, 0, 1]]
    assert s["accuracy"] == pytest.approx(0.5)
