"""The plugin host: loads the ``ptqconv`` entry-point group and collects what each plugin provides."""
from __future__ import annotations

import importlib
import sys
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Dict, List, Tuple

import pluggy

from ptqconv.core import hookspecs
from ptqconv.core.errors import PtqconvError, unknown_name

GROUP = "ptqconv"
KINDS = {  # hook name -> (registry attribute, human name)
    "register_formats": ("formats", "format"),
    "register_calibrators": ("calibrators", "calibration method"),
    "register_weight_quantizers": ("weight_quantizers", "weight quantizer"),
    "register_backends": ("backends", "backend"),
    "register_passes": ("passes", "graph pass"),
    "register_table_formats": ("table_formats", "table format"),
    "register_commands": ("commands", "command"),
}


@dataclass
class PluginInfo:
    """One loaded plugin: entry-point name, module, distribution and what it registered."""

    name: str
    module: str
    distribution: str = ""
    version: str = ""
    provides: List[Tuple[str, str]] = field(default_factory=list)


class Registry:
    """Everything the loaded plugins provide, by kind and name."""

    def __init__(self):
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: Dict[str, PluginInfo] = {}
        self.owner: Dict[Tuple[str, str], str] = {}
        for attr, _ in KINDS.values():
            setattr(self, attr, {})

    def add_plugin(self, module, name, distribution="", version=""):
        """Register ``module`` as plugin ``name`` (used for entry points and for tests)."""
        self.pm.register(module, name=name)
        self.plugins[name] = PluginInfo(name, getattr(module, "__name__", str(module)),
                                        distribution, version)

    def collect(self):
        """Call every plugin's hooks and index the records they register."""
        for hook_name, (attr, kind) in KINDS.items():
            table = getattr(self, attr)
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                plugin = impl.plugin_name

                def register(record, _plugin=plugin, _table=table, _attr=attr, _kind=kind):
                    key = (_attr, record.name)
                    if record.name in _table:
                        raise PtqconvError(f"{_kind} '{record.name}' is registered twice: by plugin "
                                           f"'{self.owner[key]}' and by plugin '{_plugin}'")
                    _table[record.name] = record
                    self.owner[key] = _plugin
                    if _plugin in self.plugins:
                        self.plugins[_plugin].provides.append((_kind, record.name))

                impl.function(register=register)
        return self

    def get(self, attr, name):
        """Return the record ``name`` of kind ``attr`` or raise an error listing what exists."""
        table = getattr(self, attr)
        if name not in table:
            kind = next(k for a, k in KINDS.values() if a == attr)
            raise unknown_name(kind, name, table)
        return table[name]

    def writer(self, name):
        """Resolve a writer name (``onnx``, ``ncnn-int8``) to (ModelFormat, quant type or None)."""
        base, quant = name, None
        for q in ("int8", "uint8"):
            if name.endswith("-" + q):
                base, quant = name[: -len(q) - 1], q
        fmt = self.formats.get(base)
        if fmt is None or fmt.write is None or (quant and quant not in fmt.quantized):
            raise unknown_name("writer", name, self.writer_names())
        return fmt, quant

    def writer_names(self):
        """All writer names, quantizing ones included."""
        names = []
        for fmt in self.formats.values():
            if fmt.write is not None:
                names.append(fmt.name)
                names += [f"{fmt.name}-{q}" for q in fmt.quantized]
        return names

    def reader(self, name):
        """Return the format called ``name`` if it can read."""
        fmt = self.formats.get(name)
        if fmt is None or fmt.read is None:
            raise unknown_name("reader", name, [f.name for f in self.formats.values() if f.read])
        return fmt


def _load_entry_points(registry: Registry):
    eps = metadata.entry_points()
    group = eps.select(group=GROUP) if hasattr(eps, "select") else eps.get(GROUP, [])
    seen = set()
    for ep in sorted(group, key=lambda e: e.name):
        if (ep.name, ep.value) in seen:
            continue
        seen.add((ep.name, ep.value))
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else ""
        version = dist.version if dist is not None else ""
        try:
            module = importlib.import_module(ep.value.split(":")[0])
            if ":" in ep.value:
                module = getattr(module, ep.value.split(":", 1)[1])
            registry.add_plugin(module, ep.name, dist_name, version)
        except Exception as exc:  # a broken third-party plugin must not break the CLI
            warnings.warn(f"ptqconv: plugin '{ep.name}' ({ep.value}) failed to load and is "
                          f"skipped: {type(exc).__name__}: {exc}", stacklevel=2)


_REGISTRY = None


def get_registry(refresh=False) -> Registry:
    """Return the process-wide registry, loading entry points on first use."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        registry = Registry()
        _load_entry_points(registry)
        _REGISTRY = registry.collect()
    return _REGISTRY
