"""The extension manual: every hook a ptqconv plugin can implement.

A plugin is a module (or object) registered under the ``ptqconv`` entry-point group::

    [project.entry-points.ptqconv]
    myformat = "my_package.ptqconv_plugin"

Each hook receives a ``register`` callback and calls it once per thing it provides, with one of the
frozen records from :mod:`ptqconv.core.records`. The host owns naming: a name registered twice is
an error naming both plugins. Built-in formats and algorithms register exactly this way.
"""
import pluggy

hookspec = pluggy.HookspecMarker("ptqconv")
hookimpl = pluggy.HookimplMarker("ptqconv")


@hookspec
def register_formats(register):
    """Register model formats: ``register(ModelFormat(name, read=..., write=..., sniff=...))``."""


@hookspec
def register_calibrators(register):
    """Register activation calibration methods: ``register(Calibrator(name, compute=...))``."""


@hookspec
def register_weight_quantizers(register):
    """Register weight quantizers: ``register(WeightQuantizer(name, quantize=...))``."""


@hookspec
def register_backends(register):
    """Register hardware backend profiles: ``register(Backend(name, ops={...}))``."""


@hookspec
def register_passes(register):
    """Register graph passes writers can ask for: ``register(GraphPass(name, run=...))``."""


@hookspec
def register_table_formats(register):
    """Register quantization-table file formats: ``register(TableFormat(name, extensions))``."""


@hookspec
def register_commands(register):
    """Register CLI sub-commands (config dialects, tools): ``register(Command(name, run=...))``."""
