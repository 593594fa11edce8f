"""Built-in hardware backend profiles: what each target runs in int8, as data.

Writers name their default profile (``ModelFormat.backend``); ``--backend`` picks another. The
quantization core asks the profile which ops to quantize and with which granularity, and refuses
a table the profile cannot run.
"""
from ptqconv.core.hookspecs import hookimpl
from ptqconv.core.records import Backend, OpCaps, TableFormat, WeightBitsRule
from ptqconv.plugins.backends.tensorrt_cache import read_trt_cache, write_trt_cache

CONV_FC = ("Conv", "Gemm", "MatMul", "ConvTranspose")
PER_CHANNEL_OR_TENSOR = ("per-channel", "per-tensor")


# ncnn's int8 Winograd F(4,3) kernels transform the weights in 16-bit integers: a 3x3 stride-1
# convolution needs codes within +-31 (ncnn2table's 31/absmax), whatever the CPU
NCNN_WINOGRAD = WeightBitsRule("Conv", {"kernel_shape": [3, 3], "strides": [1, 1],
                                        "dilations": [1, 1], "group": 1}, 6,
                               "ncnn's int8 Winograd kernels")


def _profile(name, description, ops=CONV_FC, weights=PER_CHANNEL_OR_TENSOR,
             activations=("symmetric",), unsigned=False, outputs=False, bits=(8,),
             unsigned_symmetric=False, bias_correction=None, weight_bits_rules=(),
             centre=False):
    caps = OpCaps(weights=weights, activations=activations, unsigned=unsigned, bits=bits)
    return Backend(name, {op: caps for op in ops}, description, quantize_outputs=outputs,
                   unsigned_symmetric=unsigned_symmetric, bias_correction=bias_correction,
                   weight_bits_rules=weight_bits_rules, centre_non_negative=centre)


LOW_BITS = tuple(range(2, 9))


@hookimpl
def register_backends(register):
    register(_profile("generic", "int8 Conv/Gemm/MatMul/ConvTranspose, per-channel or per-tensor "
                      "weights, symmetric activations", bits=LOW_BITS))
    register(_profile("onnxruntime", "onnxruntime QDQ: int8 or uint8 activations (zero point), "
                      "per-channel or per-tensor weights", activations=("symmetric", "asymmetric"),
                      unsigned=True, bits=LOW_BITS, unsigned_symmetric=True))
    register(_profile("generic-per-tensor", "per-tensor weights and symmetric activations only",
                      weights=("per-tensor",)))
    register(_profile("ncnn-cpu", "ncnn int8: Convolution, ConvolutionDepthWise, InnerProduct; "
                      "per-channel (per-group) weights, symmetric int8 activations; 6-bit "
                      "weights in 3x3 stride-1 convolutions (int8 Winograd); never-negative "
                      "inputs of unpadded layers centred to use every code",
                      ops=("Conv", "Gemm", "MatMul"),
                      weight_bits_rules=(NCNN_WINOGRAD,), centre=True))
    register(_profile("mnn-cpu", "MNN int8 convolutions: per-channel symmetric weights, per-tensor "
                      "activations; an int8 conv needs its output tensor's scale too",
                      ops=("Conv", "ConvTranspose"), bits=LOW_BITS, outputs=True,
                      bias_correction=False))
    register(_profile("tengine-cpu", "Tengine int8/uint8: Convolution, FC, Deconvolution",
                      ops=("Conv", "Gemm", "MatMul", "ConvTranspose"),
                      activations=("symmetric", "asymmetric"), unsigned=True))
    register(_profile("tnn-cpu", "TNN int8: Convolution, InnerProduct (per-channel, mix or "
                      "per-tensor); every int8 layer stores an output scale",
                      ops=("Conv", "Gemm", "MatMul"), outputs=True))
    register(_profile("tensorrt", "TensorRT int8: per-tensor symmetric activations, per-channel "
                      "weights", weights=("per-channel",)))


@hookimpl
def register_table_formats(register):
    register(TableFormat("tensorrt-cache", (".cache",), read_trt_cache, write_trt_cache,
                         "TensorRT calibration cache: symmetric int8 activation steps as hex"))
