"""OUTPUT_DIR/saved_model/: the trained model as a TensorFlow SavedModel a server can run alone.

`serving_default` takes uint8 clips [batch, FRAMES, HEIGHT, WIDTH, 3] (scaling is inside the
model) and returns `probabilities` [batch, classes] (softmax) and `class_names` [batch] (the
predicted class). `assets/vidtrain.json` holds what makes a clip its input (vidtrain.serving):
class_names, frames, height, width, the training's sampling mode and resize (evaluate and predict
modes take test clips of those) and both in words, and the frame template of frame folders.
Written beside, then swapped in whole (loader.atomic.swap_in): a reader sees the old export or
the new one, never half of one or none.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from loader.atomic import TEMP_PREFIX, swap_in, write_atomic
from loader.sampling import describe_test_clip

SAVED_MODEL = "saved_model"
ASSET = "vidtrain.json"


def export_saved_model(model, out: Path, class_names: list[str], sampling: str, resize: str = "squash",
                       frame_template: str | None = None) -> Path:
    import keras
    import tensorflow as tf

    frames, height, width = (int(d) for d in model.input_shape[1:4])
    names = tf.constant(list(class_names))

    def serve(clips):
        probabilities = tf.nn.softmax(model(clips, training=False), axis=-1)
        return {"probabilities": probabilities, "class_names": tf.gather(names, tf.argmax(probabilities, axis=-1))}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec([None, frames, height, width, 3], tf.uint8, name="clips")])
    for left in out.glob(f"{TEMP_PREFIX}*{SAVED_MODEL}*"):  # what a killed export left
        shutil.rmtree(left, ignore_errors=True)
    staging = out / f"{TEMP_PREFIX}{SAVED_MODEL}-{os.getpid()}"
    archive.write_out(str(staging), verbose=False)
    (staging / "assets").mkdir(exist_ok=True)
    meta = {"class_names": list(class_names), "frames": frames, "height": height, "width": width,
            "sampling": sampling, "test_clip": describe_test_clip(sampling, frames), "resize": resize,
            "frame": ("every frame resized to height x width" if resize == "squash" else
                      "every frame resized, keeping its aspect, to cover height x width, then the centre "
                      "height x width cut out"),
            "frame_template": frame_template, "input": "uint8 RGB clips [batch, frames, height, width, 3]"}
    write_atomic(staging / "assets" / ASSET, lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
    return swap_in(staging, out / SAVED_MODEL)


def read_assets(saved_model: str | os.PathLike) -> dict:
    """assets/vidtrain.json of an exported model (docs/outputs.md lists its keys)."""
    return json.loads((Path(saved_model) / "assets" / ASSET).read_text())


def read_meta(out: Path) -> dict | None:
    """assets/vidtrain.json of the SavedModel in `out`, or None when there is none."""
    return read_assets(out / SAVED_MODEL) if (out / SAVED_MODEL / "assets" / ASSET).exists() else None
