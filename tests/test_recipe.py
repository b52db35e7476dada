"""The training recipe: the rate schedule read back at given steps, AdamW's decay, label smoothing,
gradient clipping, a frozen backbone, mixed precision."""

import math

import numpy as np
import pytest
from jobs import job, settings


def recipe_settings(tmp_path, **changes):
    return settings(None, tmp_path / "out", **(dict(epochs=10, learning_rate=0.01) | changes))


@pytest.mark.parametrize("schedule, warmup, at, expected", [
    ("constant", 0, [(0, 0), (5, 3), (9, 9)], [0.01, 0.01, 0.01]),
    ("constant", 2, [(0, 0), (0, 5), (1, 0), (2, 0), (9, 9)], [0.001, 0.00325, 0.0055, 0.01, 0.01]),
    # cosine from the full rate down to 0 over 10 epochs of 10 steps: half way is half the rate
    ("cosine", 0, [(0, 0), (5, 0), (9, 9)], [0.01, 0.005, 0.01 * 0.5 * (1 + math.cos(math.pi * 99 / 100))]),
    # a warm-up epoch from a tenth of the rate, then the cosine over the 90 steps left
    ("cosine", 1, [(0, 0), (0, 5), (1, 0), (5, 5), (9, 9)],
     [0.001, 0.0055, 0.01, 0.01 * 0.5 * (1 + math.cos(math.pi * 45 / 90)),
      0.01 * 0.5 * (1 + math.cos(math.pi * 89 / 90))]),
])
def test_the_rate_at_given_steps(tmp_path, schedule, warmup, at, expected):
    from vidtrain.recipe import learning_rate

    s = recipe_settings(tmp_path, lr_schedule=schedule, warmup_epochs=warmup)
    assert [learning_rate(s, epoch, step, 10) for epoch, step in at] == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_weight_decay_is_decoupled_as_in_adamw(tmp_path):
    """A zero gradient moves nothing in Adam; AdamW still shrinks every weight by rate x decay."""
    import keras

    from vidtrain.recipe import optimizer

    for decay, expected in ((0.0, 2.0), (0.1, 2.0 * (1 - 0.01 * 0.1))):
        opt = optimizer(recipe_settings(tmp_path, weight_decay=decay))
        w = keras.Variable(np.full(3, 2.0, np.float32))
        opt.apply_gradients([(np.zeros(3, np.float32), w)])
        assert np.asarray(w) == pytest.approx([expected] * 3, rel=1e-6)


def test_label_smoothing_is_the_cross_entropy_against_smoothed_targets():
    from vidtrain.recipe import loss_per_clip

    logits = np.array([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 3.0, -2.0]], np.float32)
    labels = np.array([0, 2], np.int32)
    for s in (0.0, 0.1, 0.3):
        targets = np.full((2, 4), s / 4)
        targets[[0, 1], labels] += 1 - s
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        expected = -(targets * log_probs).sum(axis=1)
        assert np.asarray(loss_per_clip(4, s)(labels, logits)) == pytest.approx(expected, rel=1e-5)


def test_gradient_clipping_scales_the_global_norm_down(tmp_path):
    """Adam with GRAD_CLIP_NORM=1 on gradients of norm 5 updates as plain Adam does on those gradients
    divided by 5 (two steps: one step of Adam alone cannot tell a gradient from a scaled one)."""
    import keras

    from vidtrain.recipe import optimizer

    grads = [np.array([3.0, 0.0], np.float32), np.array([0.0, 4.0], np.float32)]
    later = [np.array([0.1, 0.2], np.float32), np.array([0.3, 0.0], np.float32)]
    results = []
    for clip, scale in ((1.0, 1.0), (0.0, 1 / 5)):
        opt = optimizer(recipe_settings(tmp_path, grad_clip_norm=clip))
        ws = [keras.Variable(np.ones(2, np.float32)) for _ in range(2)]
        opt.apply_gradients(zip([g * scale for g in grads], ws))
        opt.apply_gradients(zip(later, ws))  # below the norm: not clipped
        results.append([np.asarray(w) for w in ws])
    assert all(np.allclose(a, b, rtol=1e-6) for a, b in zip(*results))


@pytest.mark.slow
def test_a_frozen_backbone_trains_only_the_head_then_everything(tiny_demo, tmp_path, info_logs, caplog):
    import keras
    from jobs import Recorder

    seen = {}

    def snapshot(tag):
        def take(model):
            backbone, head = model.get_layer("backbone"), model.get_layer("logits")
            seen[tag] = ([np.asarray(w).copy() for w in backbone.weights], [np.asarray(w).copy() for w in head.weights])
        return take

    s = settings(tiny_demo, tmp_path / "out", model="tsn", height=32, width=32, epochs=2, freeze_backbone_epochs=1)
    assert job(s, Recorder(**{"step 0.1": snapshot("first"), "step 0.3": snapshot("frozen end"),
                              "step 1.3": snapshot("end")}))[0] == 0
    frozen_backbone = all(np.array_equal(a, b) for a, b in zip(seen["first"][0], seen["frozen end"][0]))
    head_moved = not all(np.array_equal(a, b) for a, b in zip(seen["first"][1], seen["frozen end"][1]))
    backbone_moved = not all(np.array_equal(a, b) for a, b in zip(seen["frozen end"][0], seen["end"][0]))
    assert frozen_backbone and head_moved and backbone_moved
    assert "epoch 2: the backbone trains from here on" in caplog.text
    saved = keras.models.load_model(tmp_path / "out" / "model.keras")
    assert saved.get_layer("backbone").trainable


@pytest.mark.slow
def test_bf16_computes_in_bfloat16_with_float32_logits(tiny_demo, tmp_path, caplog):
    """At 4 frames conv3d's third block convolves 2 frames with a kernel of 3: the shape whose bfloat16
    weight gradient oneDNN gets wrong on an AMD EPYC (Zen 4). The job trains; convolutions compute in
    bfloat16 except those the machine check (vidtrain.precision) found wrong here, each logged."""
    import keras

    assert job(settings(tiny_demo, tmp_path / "out", epochs=1, mixed_precision="bf16"))[0] == 0
    model = keras.models.load_model(tmp_path / "out" / "model.keras")
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv3D)]
    in_float32 = {layer.name for layer in convs if layer.compute_dtype == "float32"}
    logged = {r.getMessage().split()[2] for r in caplog.records if "computes in float32" in r.getMessage()}
    assert convs and len(in_float32) < len(convs) and in_float32 == logged
    assert all(layer.compute_dtype == "bfloat16" for layer in convs if layer.name not in in_float32)
    assert model.get_layer("logits").compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"  # nothing global left behind


def test_fp16_on_a_cpu_is_refused_clearly(tmp_path):
    from jobs import run_job

    from vidtrain.runtime import has_nvidia_driver

    if has_nvidia_driver():
        pytest.skip("a GPU machine: float16 is allowed here")
    result = run_job(mixed_precision="fp16", output_dir=tmp_path, timeout=120)
    assert result.returncode == 2 and "VIDTRAIN_MIXED_PRECISION=fp16: float16 needs a GPU" in result.stderr
    assert result.stderr.count("invalid configuration") == 1 and "Traceback" not in result.stderr
