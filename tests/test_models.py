"""Model builders: shapes, uint8 inputs, the registry, the custom layer, save/load."""

import numpy as np
import pytest

from models import REGISTRY, build_model


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("frames, size", [(8, (32, 32)), (16, (64, 48)), (3, (16, 24))])
def test_builds_logits_for_uint8_clips(name, frames, size):
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
