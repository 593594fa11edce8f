"""The ONNX format plugin: reader ``onnx``, writers ``onnx``, ``onnx-int8``, ``onnx-uint8``."""
from ptqconv.core.hookspecs import hookimpl
from ptqconv.core.records import ModelFormat
from ptqconv.formats.onnx.reader import read_onnx, sniff_onnx
from ptqconv.formats.onnx.writer import write_onnx


@hookimpl
def register_formats(register):
    register(ModelFormat(
        name="onnx", description="ONNX (opset >= 11); int8/uint8 as QuantizeLinear/DequantizeLinear",
        extensions=(".onnx",), read=read_onnx, write=write_onnx, sniff=sniff_onnx,
        quantized=("int8", "uint8"), backend="onnxruntime"))
