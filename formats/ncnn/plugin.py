"""The ncnn format plugin: reader ``ncnn``, writers ``ncnn`` / ``ncnn-int8``, the ``.table``
calibration-table format, and the ``ncnn`` pip runtime."""
from ptqconv.core.hookspecs import hookimpl
from ptqconv.core.records import ModelFormat
from ptqconv.formats.ncnn.reader import read_ncnn, sniff_ncnn
from ptqconv.formats.ncnn.runtime import ncnn_runtime


@hookimpl
def register_formats(register):
    register(ModelFormat(
        name="ncnn", description="ncnn text .param + .bin (fp32/fp16/int8 weights); int8 as "
                                 "ncnn2int8 writes it",
        extensions=(".param",), companions=(".bin",), read=read_ncnn, sniff=sniff_ncnn,
        backend="ncnn-cpu", runtime=ncnn_runtime))
