"""vidtrain's video loader: index -> sampling -> decode -> batch -> prefetch -> tf adapter.

Names are imported on first use (PEP 562), so `import loader.sampling` (or
index, decode, prefetch) loads no TensorFlow or Keras: only `VideoSequence`
(a Keras PyDataset) and `to_tf_dataset` need them.
"""

from importlib import import_module

_HOMES = {
    "to_tf_dataset": "adapters",
    "FrameCache": "cache",
    "DecodeError": "decode", "check_decode_device": "decode", "count_frames": "decode", "decode_clip": "decode",
    "decode_frames": "decode",
    "DEMO_CLASSES": "demo", "make_demo_dataset": "demo",
    "CacheHooks": "hooks", "IndexHooks": "hooks", "LoaderHooks": "hooks", "NullCacheMetrics": "hooks",
    "NullIndexMetrics": "hooks", "NullLoaderMetrics": "hooks",
    "DatasetIndex": "index", "Listing": "index", "ProbeInterrupted": "index", "Skipped": "index",
    "find_videos": "index", "list_clips": "index", "probe": "index", "read_manifest": "index", "read_paths": "index",
    "ManifestError": "paths",
    "PrefetchGenerator": "prefetch",
    "random_offset_indices": "sampling", "sample_indices": "sampling", "stride_indices": "sampling",
    "test_indices": "sampling", "uniform_indices": "sampling",
    "VideoSequence": "sequence", "flip_label_map": "sequence",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'loader' has no attribute {name!r}")
    value = getattr(import_module(f"loader.{_HOMES[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return __all__
