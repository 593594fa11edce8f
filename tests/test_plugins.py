"""The plugin host: third-party entry points, clashes, broken plugins, name errors."""
import textwrap
import types

import numpy as np
import pytest

from cli_helpers import assert_one_line_error, run_cli
from ptqconv.core.errors import PtqconvError
from ptqconv.core.hookspecs import hookimpl
from ptqconv.core.plugins import Registry, get_registry
from ptqconv.core.records import Calibrator, ModelFormat
from synthetic import tiny_cnn

PLUGIN = textwrap.dedent('''
    """A third-party ptqconv plugin: the 'npz' format writes every constant of the graph."""
    import numpy as np
    from ptqconv.core.atomic import atomic_outputs
    from ptqconv.core.hookspecs import hookimpl
    from ptqconv.core.records import ModelFormat

    def write_npz(graph, table, paths, options):
        with atomic_outputs(paths) as (tmp,):
            with open(tmp, "wb") as f:
                np.savez(f, **{k.replace("/", "_"): v for k, v in graph.constants.items()})
        return paths

    @hookimpl
    def register_formats(register):
        register(ModelFormat("npz", "numpy archive of the constants", (".npz",), write=write_npz))
''')


def _install_plugin(folder, module_body=PLUGIN, module="acme_ptq", dist="acme-ptq"):
    folder.mkdir(exist_ok=True)
    (folder / f"{module}.py").write_text(module_body)
    info = folder / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[ptqconv]\nacme = {module}\n")
    return {"PYTHONPATH": str(folder)}


def test_external_plugin_is_listed_and_converts(tmp_path):
    env = _install_plugin(tmp_path / "site")
    listing = run_cli("plugins", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "acme  (acme_ptq; acme-ptq 1.2.3)" in listing.stdout
    assert "format: npz [write]" in listing.stdout
    model = tiny_cnn(tmp_path / "m.onnx")
    out = tmp_path / "consts.npz"
    proc = run_cli("--to", "npz", "-i", model, "-o", out, "-q", env=env)
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as z:
        assert z["w1"].shape == (8, 3, 3, 3)  # BN was folded into conv1's weight


def test_broken_plugin_is_a_warning_not_a_broken_cli(tmp_path):
    env = _install_plugin(tmp_path / "site", module_body="raise ImportError('no such thing')\n")
    proc = run_cli("plugins", env=env)
    assert proc.returncode == 0
    assert "plugin 'acme'" in proc.stderr and "skipped" in proc.stderr
    assert "onnx  (ptqconv.formats.onnx.plugin" in proc.stdout


def test_name_registered_twice_names_both_plugins():
    registry = Registry()
    for name in ("first", "second"):
        mod = types.SimpleNamespace(register_calibrators=hookimpl(
            lambda register: register(Calibrator("same", lambda *a: None))))
        registry.add_plugin(mod, name)
    with pytest.raises(PtqconvError, match="registered twice: by plugin '(first|second)' and by "
                                           "plugin '(first|second)'"):
        registry.collect()


def test_unknown_names_list_what_exists():
    registry = get_registry()
    with pytest.raises(PtqconvError, match=r"unknown backend 'ncnn-cpuu' \(did you mean 'ncnn-cpu'\?\)"):
        registry.get("backends", "ncnn-cpuu")
    fmt, quant = registry.writer("onnx-uint8")
    assert fmt.name == "onnx" and quant == "uint8"


def test_builtins_are_registered_through_entry_points():
    registry = get_registry()
    assert registry.plugins["onnx"].distribution == "ptqconv"
    assert {"kl", "minmax"} <= set(registry.calibrators)
    assert isinstance(registry.formats["onnx"], ModelFormat)
