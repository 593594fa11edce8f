"""The ncnn format plugin: reader ``ncnn``, writers ``ncnn`` / ``ncnn-int8``, the ``.table``
calibration-table format, and the ``ncnn`` pip runtime."""
from ptqconv.core.hookspecs import hookimpl
from ptqconv.core.records import ModelFormat, TableFormat
from ptqconv.formats.ncnn.reader import read_ncnn, sniff_ncnn
from ptqconv.formats.ncnn.runtime import ncnn_runtime
from ptqconv.formats.ncnn.table import read_ncnn_table, write_ncnn_table
from ptqconv.formats.ncnn.writer import write_ncnn


@hookimpl
def register_formats(register):
    register(ModelFormat(
        name="ncnn", description="ncnn text .param + .bin (fp32/fp16/int8 weights); int8 as "
                                 "ncnn2int8 writes it",
        extensions=(".param",), companions=(".bin",), read=read_ncnn, write=write_ncnn,
        sniff=sniff_ncnn, quantized=("int8",), backend="ncnn-cpu",
        write_passes=("fuse_activation",), runtime=ncnn_runtime))


@hookimpl
def register_table_formats(register):
    register(TableFormat("ncnn-table", (".table",), read_ncnn_table, write_ncnn_table,
                         "ncnn2table's calibration table: per-layer weight and input multipliers"))
