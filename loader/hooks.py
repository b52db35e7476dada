"""The instrumentation hooks the loader calls, as a protocol with a do-nothing default.

The loader reports into whatever object it is given (the job passes its
Prometheus metrics, bound to a split); it never imports a metrics library.
Methods are called from worker threads (batch load, queue depth, skips) and
from the consuming thread (data wait), so implementations must be thread-safe.
"""

from __future__ import annotations

from typing import Protocol


class LoaderHooks(Protocol):
    def observe_batch_load(self, seconds: float) -> None:
        """One batch decoded and assembled (worker thread)."""

    def observe_data_wait(self, seconds: float, clips: int) -> None:
        """The consumer waited this long for the batch it just received, of `clips` clips (one call per
        batch consumed)."""

    def set_queue_depth(self, depth: int) -> None:
        """Batches built and waiting to be consumed."""

    def count_skip(self, reason: str) -> None:
        """A clip was left out, for `reason`."""


class CacheHooks(Protocol):
    def count_cache(self, hit: bool) -> None:
        """One clip looked up in the frame cache (worker thread)."""

    def set_cache_bytes(self, total: int, bound: int) -> None:
        """Bytes the frame cache holds now, of at most `bound`."""


class NullCacheMetrics:
    """CacheHooks that record nothing."""

    def count_cache(self, hit: bool) -> None: ...
    def set_cache_bytes(self, total: int, bound: int) -> None: ...


class NullLoaderMetrics:
    """LoaderHooks that record nothing."""

    def observe_batch_load(self, seconds: float) -> None: ...
    def observe_data_wait(self, seconds: float, clips: int) -> None: ...
    def set_queue_depth(self, depth: int) -> None: ...
    def count_skip(self, reason: str) -> None: ...


class IndexHooks(Protocol):
    def set_index_progress(self, done: int, total: int) -> None:
        """Clips probed so far of the clips to probe (the probing thread)."""


class NullIndexMetrics:
    """IndexHooks that record nothing."""

    def set_index_progress(self, done: int, total: int) -> None: ...
