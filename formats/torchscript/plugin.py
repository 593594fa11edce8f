"""The TorchScript format plugin: reader ``torchscript`` (needs the pnnx executable, no torch)."""
from ptqconv.core.hookspecs import hookimpl
from ptqconv.core.records import ModelFormat
from ptqconv.formats.torchscript.archive import sniff_torchscript
from ptqconv.formats.torchscript.pnnx import pnnx_status
from ptqconv.formats.torchscript.reader import read_torchscript


@hookimpl
def register_formats(register):
    register(ModelFormat(
        name="torchscript",
        description=f"TorchScript .pt/.pth (torch.jit.trace/script) through pnnx; {pnnx_status()}",
        extensions=(".pt", ".pth", ".torchscript"), read=read_torchscript,
        sniff=sniff_torchscript, backend="generic"))
