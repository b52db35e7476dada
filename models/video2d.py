"""2-D ImageNet backbones over time: TSN (temporal averaging) and TSM (temporal shift).

Every frame goes through one `keras.applications` backbone (`include_top=False`, global
average pooling, the library's own input preprocessing inside the model, so the model still
takes uint8 clips); the frame features are averaged over time (TSN's consensus, Wang et al.) and
classified. TSM (Lin et al.) adds a temporal shift in every residual block: before the block's
first convolution, an eighth of the channels take the next frame's values and an eighth the
previous frame's (zeros at the ends), so a 2-D backbone mixes time at no extra cost; the
shortcut keeps the unshifted input ("residual shift").

Weights: `weights=None` (random), "imagenet" (Keras's own download and cache, KERAS_HOME or
~/.keras/models), or a local weights file of that backbone.
"""

from __future__ import annotations

import re
import warnings

import keras
from keras import layers, ops

from models import BACKBONE_LAYER, BACKBONE_MIN_SIZE, BACKBONES

SHIFT_DIVISOR = 8  # TSM: 1/8 of the channels shifted each way


class BackboneWeightsError(ValueError):
    """The backbone's weights cannot be had (no download, no such file, or a file that does not fit)."""


@keras.saving.register_keras_serializable(package="vidtrain")
class TemporalShift(layers.Layer):
    """[B*T, H, W, C] frames of B clips of T frames: channels [0, C/8) take frame t+1's values, channels
    [C/8, C/4) frame t-1's, zeros where there is none; the rest stay."""

    def __init__(self, frames: int, **kwargs):
        super().__init__(**kwargs)
        self.frames = frames

    def call(self, x):
        fold = x.shape[-1] // SHIFT_DIVISOR
        clips = ops.reshape(x, (-1, self.frames, *x.shape[1:]))
        pad = [[0, 0]] * (len(clips.shape) - 1)
        earlier = ops.pad(clips[:, 1:, ..., :fold], [[0, 0], [0, 1]] + pad[2:] + [[0, 0]])
        later = ops.pad(clips[:, :-1, ..., fold:2 * fold], [[0, 0], [1, 0]] + pad[2:] + [[0, 0]])
        shifted = ops.concatenate([earlier, later, clips[..., 2 * fold:]], axis=-1)
        return ops.reshape(shifted, ops.shape(x))

    def get_config(self):
        return super().get_config() | {"frames": self.frames}


@keras.saving.register_keras_serializable(package="vidtrain")
class Preprocess(layers.Layer):
    """A backbone's own `keras.applications.<module>.preprocess_input`, as a layer (for those whose
    model does not include it)."""

    def __init__(self, module: str, **kwargs):
        super().__init__(**kwargs)
        self.module = module

    def call(self, x):
        return getattr(keras.applications, self.module).preprocess_input(x)

    def get_config(self):
        return super().get_config() | {"module": self.module}


def backbone(name: str, height: int, width: int, weights: str | None) -> keras.Model:
    """The per-frame feature extractor: float RGB frames in [0, 255] -> pooled features."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choices: {', '.join(BACKBONES)}")
    constructor, module, preprocesses = BACKBONES[name]
    kwargs = {"include_preprocessing": True} if preprocesses else {}
    try:
        with warnings.catch_warnings():  # weights made at 224x224 serve any size without a top: by design here
            warnings.filterwarnings("ignore", message=".*Weights for input shape.*will be loaded as the default")
            net = getattr(keras.applications, constructor)(include_top=False, weights=weights, pooling="avg",
                                                             input_shape=(height, width, 3), **kwargs)
    except Exception as exc:  # noqa: BLE001 - Keras raises plain Exception for a failed download
        raise BackboneWeightsError(_why(name, weights, exc)) from None
    if preprocesses:
        return net
    inputs = keras.Input((height, width, 3))
    return keras.Model(inputs, net(Preprocess(module)(inputs)), name=f"{name}_preprocessed")


def _why(name: str, weights: str | None, exc: Exception) -> str:
    url = re.search(r"https?://\S+?\.h5", str(exc))
    if weights == "imagenet" and url:
        from keras.src.backend.config import keras_home

        file = url[0].rsplit("/", 1)[1]
        return (f"the ImageNet weights of {name} cannot be downloaded ({url[0]}): place {file} in "
                f"{keras_home()}/models/ (Keras's cache; KERAS_HOME moves it), or name a local weights file")
    return f"the weights {weights!r} do not fit the {name} backbone ({str(exc).splitlines()[0][:300]})"


def _shift_every_residual_block(net: keras.Model, frames: int) -> keras.Model:
    """`net` rewired (same layers, same weights) with a TemporalShift before the first layer of every
    residual branch: the layers, other than the Add, that read an Add's block input."""
    firsts = set()
    for layer in net.layers:
        if isinstance(layer, layers.Add):
            for x in layer.input:
                for other in net.layers:
                    if other is not layer and any(any(t is x for t in keras.tree.flatten(node.input_tensors))
                                                  for node in other._inbound_nodes):
                        firsts.add(other.name)

    def call(layer, *args, **kwargs):
        if layer.name in firsts:
            args = (TemporalShift(frames, name=f"{layer.name}_shift")(args[0]), *args[1:])
        return layer(*args, **kwargs)

    return keras.models.clone_model(net, clone_function=lambda layer: layer, call_function=call)


def build(num_classes: int, frames: int, height: int, width: int, backbone_name: str = "mobilenet_v3_small",
          weights: str | None = None, shift: bool = False, dropout: float = 0.3, **_) -> keras.Model:
    if min(height, width) < BACKBONE_MIN_SIZE:
        raise ValueError(f"a 2-D backbone needs frames of at least {BACKBONE_MIN_SIZE}x{BACKBONE_MIN_SIZE}, "
                         f"got {height}x{width}")
    inputs = keras.Input((frames, height, width, 3), dtype="uint8", name="clip")
    x = ops.cast(ops.reshape(inputs, (-1, height, width, 3)), "float32")  # every frame, as an image
    net = backbone(backbone_name, height, width, weights)
    if shift:
        net = _shift_every_residual_block(net, frames)
    net.name = BACKBONE_LAYER
    x = net(x)
    x = ops.reshape(x, (-1, frames, x.shape[-1]))  # back to clips: [B, T, features]
    x = layers.GlobalAveragePooling1D(name="consensus")(x)  # TSN: the average over the clip's frames
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"{'tsm' if shift else 'tsn'}_{backbone_name}")


def build_tsn(num_classes: int, frames: int, height: int, width: int, **options) -> keras.Model:
    return build(num_classes, frames, height, width, shift=False, **options)


def build_tsm(num_classes: int, frames: int, height: int, width: int, **options) -> keras.Model:
    return build(num_classes, frames, height, width, shift=True, **options)
