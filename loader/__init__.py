"""vidtrain's video loader: index -> sampling -> decode -> batch -> prefetch -> tf adapter."""

from loader.adapters import to_tf_dataset
from loader.decode import DecodeError, check_decode_device, count_frames, decode_clip, decode_frames
from loader.demo import DEMO_CLASSES, make_demo_dataset
from loader.index import ManifestError, Skipped, find_videos, probe, read_manifest
from loader.prefetch import PrefetchGenerator
from loader.sampling import random_offset_indices, sample_indices, stride_indices, uniform_indices
from loader.sequence import NullLoaderMetrics, VideoSequence, flip_label_map

__all__ = [
    "DEMO_CLASSES", "DecodeError", "ManifestError", "NullLoaderMetrics", "PrefetchGenerator", "Skipped",
    "VideoSequence", "check_decode_device", "count_frames", "decode_clip", "decode_frames", "find_videos",
    "flip_label_map", "make_demo_dataset", "probe", "random_offset_indices", "read_manifest",
    "sample_indices", "stride_indices", "to_tf_dataset", "uniform_indices",
]
