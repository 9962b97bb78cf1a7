"""The optional native extension. ``HAS_C`` is False when it was not built."""
try:
    from trim_fast import _C  # type: ignore[attr-defined]

    HAS_C = True
except ImportError:  # built without a compiler, or TRIM_FAST_NO_EXT=1
    _C = None
    HAS_C = False

__all__ = ["_C", "HAS_C"]
