"""Decode real encoded files of several codecs and containers, and frame folders."""

import av
import numpy as np
import pytest
from conftest import CODECS, gradient_frames
from PIL import Image

from loader.decode import DecodeError, check_decode_device, count_frames, decode_clip, decode_frames
from loader.demo import render_clip


def brightness(frames: np.ndarray) -> np.ndarray:
    return frames.reshape(len(frames), -1).mean(axis=1)


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_codecs_decode_the_right_frames_at_the_requested_size(make_video, codec):
    path = make_video("clip", gradient_frames(12), codec)
    assert count_frames(path) == 12
    frames = decode_frames(path, [0, 5, 11], size=(32, 40))
    assert frames.shape == (3, 32, 40, 3) and frames.dtype == np.uint8
    assert np.allclose(brightness(frames), [10, 110, 230], atol=8)  # frame k has level 10 + 20k


@pytest.mark.parametrize("size", [(32, 48), (16, 16), (64, 96), (32, 40)])
def test_widths_decord_pads_still_decode(make_video, size):
    """decord pads rows of some widths and reports extra channels (dmlc/decord#336)."""
    frames = decode_frames(make_video("clip", gradient_frames(12)), [0, 11, 5], size=size)
    assert frames.shape == (3, *size, 3)
    assert np.allclose(brightness(frames), [10, 230, 110], atol=8)


@pytest.mark.parametrize("width", [96, 48, 64])
def test_native_width_decodes_exactly_like_pyav(make_video, width):
    frames = render_clip("stop", np.random.default_rng(3))[:6, :, :width]
    path = make_video("clip", np.ascontiguousarray(frames))
    with av.open(str(path)) as container:
        reference = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert np.array_equal(decode_frames(path, [0, 2, 5]), reference[[0, 2, 5]])


def test_repeated_and_unsorted_indices_come_back_in_request_order(make_video):
    path = make_video("clip", gradient_frames(12))
    frames = decode_frames(path, [7, 2, 2, 7, 0])
    assert np.allclose(brightness(frames), [150, 50, 50, 150, 10], atol=8)


def test_decode_clip_samples_from_the_real_frame_count(make_video):
    path = make_video("clip", gradient_frames(9))
    seen = []
    frames = decode_clip(path, lambda n: seen.append(n) or np.array([0, n - 1]), (16, 16))
    assert seen == [9] and frames.shape == (2, 16, 16, 3)


def test_one_frame_clip(make_video):
    path = make_video("one", gradient_frames(1))
    assert count_frames(path) == 1
    assert decode_frames(path, [0, 0, 0]).shape[0] == 3


def test_frame_folder_in_natural_order(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    for k, frame in enumerate(gradient_frames(12)):
        Image.fromarray(frame).save(folder / f"img_{k + 1}.png")  # img_10 sorts after img_9
    (folder / "notes.txt").write_text("not a frame")
    assert count_frames(folder) == 12
    frames = decode_frames(folder, [0, 8, 9, 11], size=(24, 30))
    assert frames.shape == (4, 24, 30, 3)
    assert np.allclose(brightness(frames), [10, 170, 190, 230], atol=1)


def test_index_past_the_end_is_a_decode_error(make_video):
    path = make_video("clip", gradient_frames(5))
    with pytest.raises(DecodeError, match="frame 5 requested, clip has 5"):
        decode_frames(path, [5])


def _audio_only(path):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for _ in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _truncated(path, make_video):
    """An mp4 with its index first (faststart) cut short: it opens, but frames are missing."""
    frames = render_clip("swipe_left", np.random.default_rng(0))  # noisy: data outweighs the index
    with av.open(str(path) + ".full.mp4", "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=15)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"x264-params": "no-mbtree=1"}  # the same bytes every run, so the same cut
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = open(str(path) + ".full.mp4", "rb").read()
    path.write_bytes(data[: len(data) * 6 // 10])


@pytest.mark.parametrize(
    "name, write, kind",
    [
        ("empty.mp4", lambda p, mv: p.write_bytes(b""), "empty"),
        ("garbage.mp4", lambda p, mv: p.write_bytes(np.random.default_rng(0).bytes(4000)), "unreadable"),
        ("audio.m4a", lambda p, mv: _audio_only(p), "no_video"),
        ("cut.mp4", _truncated, "truncated"),
        ("folder", lambda p, mv: p.mkdir(), "empty"),
    ],
)
def test_bad_files_raise_decode_error_with_path_and_kind(tmp_path, make_video, name, write, kind):
    path = tmp_path / name
    write(path, make_video)
    with pytest.raises(DecodeError) as info:
        count_frames(path)
    assert info.value.path == str(path) and info.value.kind == kind
    assert str(path) in str(info.value) and "Check failed" not in info.value.reason or kind == "truncated"


def test_gpu_decode_fails_at_start_with_a_clear_message_or_works(make_video):
    path = make_video("clip", gradient_frames(4))
    check_decode_device("cpu", path)
    try:
        check_decode_device("gpu", path)
    except RuntimeError as exc:  # decord built without CUDA, as on PyPI
        assert "decode device 'gpu' is not usable" in str(exc) and "CUDA" in str(exc)
    else:  # a CUDA build of decord: GPU frames must match the CPU ones
        assert decode_frames(path, [1], device="gpu").shape == decode_frames(path, [1]).shape


def test_unknown_device_is_rejected(make_video):
    with pytest.raises(ValueError, match="decode device must be one of"):
        decode_frames(make_video("clip", gradient_frames(2)), [0], device="tpu")


def _same_picture_in(mode_of, tmp_path):
    """One picture saved in 8-bit RGB and as `mode_of(rgb) -> (PIL image, suffix)`; both decoded."""
    rgb = np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    rgb[:, :, 1] = rgb[:, :, 2] = rgb[:, :, 0]  # grey, so every mode can hold it
    image, suffix = mode_of(rgb)
    for name, img in (("a", Image.fromarray(rgb)), ("b", image)):
        (tmp_path / name).mkdir()
        img.save(tmp_path / name / f"0{suffix if name == 'b' else '.png'}")
    return decode_frames(tmp_path / "a", [0]), decode_frames(tmp_path / "b", [0])


@pytest.mark.parametrize("mode", ["I;16", "I", "P", "LA", "RGBA", "CMYK"])
def test_frames_of_any_image_mode_decode_to_the_same_8_bit_picture(tmp_path, mode):
    def convert(rgb):
        grey = rgb[:, :, 0]
        if mode in ("I;16", "I"):  # the same picture at 16 bits: v * 257 maps 0..255 onto 0..65535
            image = Image.fromarray((grey.astype(np.uint16) * 257).astype(np.uint16 if mode == "I;16" else np.int32))
            assert image.mode == mode
            return image, ".png" if mode == "I;16" else ".tif"  # Pillow writes 32-bit grey as TIFF only
        if mode == "CMYK":
            return Image.fromarray(rgb).convert("CMYK"), ".jpg"
        return Image.fromarray(grey).convert(mode), ".png"  # from grey: a palette holds it exactly

    eight, other = _same_picture_in(convert, tmp_path)
    tolerance = 2 if mode == "CMYK" else 1  # the CMYK file is a JPEG (lossy at quality 75)
    assert other.shape == eight.shape and np.abs(other.astype(int) - eight.astype(int)).max() <= (
        tolerance if mode != "CMYK" else 40)
    assert abs(other.astype(float).mean() - eight.astype(float).mean()) <= tolerance


def test_a_bad_frame_mid_folder_is_reported_against_the_clip(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    for k, frame in enumerate(gradient_frames(6)):
        Image.fromarray(frame).save(folder / f"{k}.png")
    (folder / "3.png").write_bytes(b"not a png")
    with pytest.raises(DecodeError) as info:
        count_frames(folder)  # the probe opens every frame's header, not just the last
    assert info.value.path == str(folder) and "frame 3.png" in info.value.reason
    with pytest.raises(DecodeError) as info:
        decode_frames(folder, [2, 3])
    assert info.value.path == str(folder) and "frame 3.png" in info.value.reason
