"""The tmfile format plugin: reader ``tmfile``, writers ``tmfile``, ``tmfile-int8``,
``tmfile-uint8``, and Tengine's calibration table (``.scale``)."""
from ptqconv.core.hookspecs import hookimpl
from ptqconv.core.records import ModelFormat, TableFormat
from ptqconv.formats.tmfile.reader import read_tmfile, sniff_tmfile
from ptqconv.formats.tmfile.scale_table import read_scale_table, write_scale_table
from ptqconv.formats.tmfile.writer import write_tmfile


@hookimpl
def register_formats(register):
    register(ModelFormat(
        name="tmfile", description="Tengine tmfile (tm2); int8/uint8 as quant_tool lays them out",
        extensions=(".tmfile",), read=read_tmfile, write=write_tmfile, sniff=sniff_tmfile,
        quantized=("int8", "uint8"), backend="tengine-cpu", write_passes=("fuse_activation",)))


@hookimpl
def register_table_formats(register):
    register(TableFormat("tengine-scale", (".scale",), read_scale_table, write_scale_table,
                         "Tengine quant_tool calibration table: 'name scale zero_point' lines"))
