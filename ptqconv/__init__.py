"""ptqconv: post-training quantization and conversion for mobile inference engines.

The public Python API is :func:`convert` (one call for the whole job) and :func:`load_plugins`.
"""
__version__ = "0.1.0"


def convert(config, **overrides):
    """Run a conversion job; ``config`` is a dict, a YAML path or a :class:`Config`.

    Returns a :class:`ptqconv.core.convert.ConvertResult` (output paths, table, timings).
    """
    from ptqconv.core.convert import convert as _convert
    return _convert(config, **overrides)


def load_plugins():
    """Return the process-wide plugin registry (formats, calibrators, ...)."""
    from ptqconv.core.plugins import get_registry
    return get_registry()
