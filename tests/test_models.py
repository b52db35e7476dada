"""Model builders: shapes, uint8 inputs, the registry, the custom layer, save/load."""

import numpy as np
import pytest

from models import REGISTRY, build_model

TWO_D = ("tsn", "tsm")  # per-frame keras.applications backbones


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("frames, size", [(8, (32, 32)), (16, (64, 48)), (3, (16, 24))])
def test_builds_logits_for_uint8_clips(name, frames, size):
    if name in TWO_D and min(size) < 32:
        with pytest.raises(ValueError, match="at least 32x32"):
            build_model(name, 5, frames, *size)
        return
    model = build_model(name, 5, frames, *size)
    clips = np.random.default_rng(0).integers(0, 255, (2, frames, *size, 3), dtype=np.uint8)
    logits = model.predict_on_batch(clips)
    assert logits.shape == (2, 5) and np.all(np.isfinite(logits))
    assert model.input.dtype == "uint8"


def test_conv3d_takes_a_single_frame():
    assert build_model("conv3d", 3, 1, 16, 16).output_shape == (None, 3)


def test_cnn_rnn_needs_two_frames_and_a_known_cell():
    with pytest.raises(ValueError, match="frames >= 2"):
        build_model("cnn_rnn", 3, 1, 16, 16)
    with pytest.raises(ValueError, match="rnn_cell must be 'gru' or 'lstm'"):
        build_model("cnn_rnn", 3, 4, 16, 16, rnn_cell="tcn")


def test_unknown_model_lists_the_choices():
    with pytest.raises(ValueError, match="choices: conv3d, cnn_rnn"):
        build_model("resnet", 3, 4, 16, 16)


@pytest.mark.parametrize("row, col, expected", [(0, 0, (-1, -1)), (7, 7, (1, 1)), (0, 7, (1, -1)),
                                                (7, 0, (-1, 1)), (2, 5, (3 / 7, -3 / 7))])
def test_spatial_soft_argmax_finds_the_peak(row, col, expected):
    from models.cnn_rnn import SpatialSoftArgmax

    maps = np.zeros((1, 8, 8, 2), np.float32)
    maps[0, row, col, 0] = 50.0  # channel 0 peaks at (row, col)
    out = np.asarray(SpatialSoftArgmax()(maps))
    assert out.shape == (1, 4)
    assert out[0, :2] == pytest.approx(expected, abs=1e-4)  # (x, y) of channel 0
    assert out[0, 2:] == pytest.approx((0, 0), abs=1e-6)  # channel 1 is flat: the centre


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_save_and_load_round_trip(name, tmp_path):
    import keras

    model = build_model(name, 4, 6, 32, 32)
    clips = np.random.default_rng(1).integers(0, 255, (2, 6, 32, 32, 3), dtype=np.uint8)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    assert np.allclose(model.predict_on_batch(clips), again.predict_on_batch(clips), atol=1e-5)


def test_temporal_shift_moves_an_eighth_of_the_channels_each_way():
    """TSM on a small tensor: 2 clips of 3 frames, 16 channels; channel c of frame t holds 100 t + c."""
    from models.video2d import TemporalShift

    t, c = 3, 16
    frames = np.array([[[[100 * k + ch for ch in range(c)]]] for k in range(t)], np.float32)  # [T, 1, 1, C]
    x = np.concatenate([frames, frames + 1000])  # [2 T, 1, 1, C]
    out = np.asarray(TemporalShift(t)(x)).reshape(2, t, c)
    first = out[0]
    assert first[:, :2].tolist() == [[100, 101], [200, 201], [0, 0]]  # channels 0-1: the next frame's
    assert first[:, 2:4].tolist() == [[0, 0], [2, 3], [102, 103]]  # channels 2-3: the previous frame's
    assert first[:, 4:].tolist() == frames.reshape(t, c)[:, 4:].tolist()  # the rest stay
    assert out[1, 0, :2].tolist() == [1100, 1101]  # clips stay apart


def test_tsm_shifts_in_every_residual_block_and_tsn_nowhere():
    backbone = build_model("tsm", 3, 4, 32, 32).get_layer("backbone")
    shifts = [layer.name for layer in backbone.layers if layer.name.endswith("_shift")]
    assert len(shifts) == 6 and all(n.startswith("expanded_conv_") and n.endswith("_expand_shift") for n in shifts)
    assert not [layer for layer in build_model("tsn", 3, 4, 32, 32).get_layer("backbone").layers
                if layer.name.endswith("_shift")]


@pytest.mark.parametrize("name", TWO_D)
def test_backbone_weights_from_a_local_file_are_the_ones_used(name, tmp_path):
    """No model hub here: a backbone's weights are made and saved by the test, loaded through the
    setting, and the model's backbone must compute exactly what the saved one does."""
    import keras

    from models.video2d import backbone

    saved = backbone("mobilenet_v3_small", 32, 32, None)
    rng = np.random.default_rng(0)
    for w in saved.weights:  # not what a fresh initialisation gives
        w.assign(np.asarray(w) + rng.normal(0, 0.05, w.shape).astype(np.float32))
    saved.save_weights(tmp_path / "mine.weights.h5")
    model = build_model(name, 3, 4, 32, 32, backbone_name="mobilenet_v3_small",
                        weights=str(tmp_path / "mine.weights.h5"))
    frames = rng.integers(0, 255, (4, 32, 32, 3)).astype(np.float32)
    used = model.get_layer("backbone")
    if name == "tsn":
        assert np.allclose(used.predict_on_batch(frames), saved.predict_on_batch(frames), atol=1e-5)
    ours = {w.path.split("/", 1)[-1]: np.asarray(w) for w in used.weights}
    theirs = {w.path.split("/", 1)[-1]: np.asarray(w) for w in saved.weights}
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    fresh = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3),
                                                pooling="avg", include_preprocessing=True)
    assert not np.allclose(fresh.predict_on_batch(frames), saved.predict_on_batch(frames), atol=1e-3)


def test_a_weights_file_of_another_backbone_is_refused_naming_it(tmp_path):
    from models.video2d import BackboneWeightsError, backbone

    backbone("efficientnet_v2_b0", 32, 32, None).save_weights(tmp_path / "other.weights.h5")
    with pytest.raises(BackboneWeightsError, match="do not fit the mobilenet_v3_small backbone"):
        build_model("tsn", 3, 4, 32, 32, backbone_name="mobilenet_v3_small",
                    weights=str(tmp_path / "other.weights.h5"))


@pytest.mark.parametrize("backbone", ["mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_v2_b0", "resnet50"])
def test_the_imagenet_file_named_for_each_backbone_is_the_one_keras_asks_for(backbone):
    """--help and the docs name the file of each backbone's ImageNet weights (models.IMAGENET_FILES): the
    one Keras's download asks for (this machine reaches no model hub: the download fails, naming it)."""
    from models import IMAGENET_FILES
    from models.video2d import BackboneWeightsError
    from models.video2d import backbone as make

    with pytest.raises(BackboneWeightsError, match=f"place {IMAGENET_FILES[backbone]} in "):
        make(backbone, 32, 32, "imagenet")


@pytest.mark.slow
def test_imagenet_weights_that_cannot_be_had_exit_2_naming_the_file_and_where_to_put_it(tiny_demo, tmp_path,
                                                                                        info_logs, caplog):
    """This machine reaches no model hub: Keras's download fails, and the job says what to do."""
    from jobs import job, settings

    code, _ = job(settings(tiny_demo, tmp_path / "out", model="tsn", height=32, width=32,
                           backbone_weights="imagenet"))
    assert code == 2 and "invalid configuration: VIDTRAIN_BACKBONE_WEIGHTS=imagenet" in caplog.text
    assert "place weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5 in " in caplog.text
    assert "/models/ (Keras's cache; KERAS_HOME moves it)" in caplog.text
