"""The mnn format plugin: registers its reader and writers with the ptqconv host."""
from ptqconv.core.hookspecs import hookimpl
from ptqconv.core.records import ModelFormat
from ptqconv.formats.mnn.reader import read_mnn, sniff_mnn
from ptqconv.formats.mnn.runtime import mnn_runtime
from ptqconv.formats.mnn.writer import write_mnn


@hookimpl
def register_formats(register):
    register(ModelFormat(
        name="mnn", description="MNN .mnn (FlatBuffers); int8 as MNN 3.x's quantizer writes it",
        extensions=(".mnn",), read=read_mnn, write=write_mnn, sniff=sniff_mnn,
        quantized=("int8",), backend="mnn-cpu", write_passes=("fuse_activation",),
        runtime=mnn_runtime))
