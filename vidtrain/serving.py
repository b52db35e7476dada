"""A clip as the exported model takes it: what a server runs before `saved_model/`'s serving_default.

The SavedModel needs no project code; making its input from a video file does: the same frames
predict mode samples (the training's time scale, at the centre of each segment or stride), resized
as in training (squashed, or covering and centre-cropped), from `assets/vidtrain.json`. So a
server gets predict mode's probabilities:

    import tensorflow as tf
    from vidtrain.serving import clip_input
    model = tf.saved_model.load("output/saved_model")
    out = model.signatures["serving_default"](clips=tf.constant(clip_input("clip.mp4", "output/saved_model")))

It needs this project's `loader` (decord, Pillow; TensorFlow through Keras's PyDataset) beside it,
as the image has.
"""

from __future__ import annotations

import os

import numpy as np

from vidtrain.export import read_assets


def clip_input(path: str | os.PathLike, saved_model: str | os.PathLike) -> np.ndarray:
    """uint8 [1, frames, height, width, 3]: clip `path` (a video file or a folder of frames) as predict
    mode gives it to the model exported in `saved_model`. Raises loader.DecodeError for a clip that
    cannot be read."""
    from loader import VideoSequence

    meta = read_assets(saved_model)
    sequence = VideoSequence([(str(path), 0)], 1, meta["frames"], (meta["height"], meta["width"]),
                             sampling=meta["sampling"], test_mode=True, resize=meta["resize"], on_bad_video="fail",
                             frame_template=meta.get("frame_template"))
    return sequence[0][0]
