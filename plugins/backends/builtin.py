"""Built-in hardware backend profiles (capabilities as data)."""
from ptqconv.core.hookspecs import hookimpl
from ptqconv.core.records import Backend, OpCaps

_CONV_FC = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def _profile(name, description, ops, weights=("per-channel", "per-tensor"),
             activations=("symmetric",), unsigned=False, outputs=False):
    caps = OpCaps(weights=weights, activations=activations, unsigned=unsigned)
    return Backend(name, {op: caps for op in ops}, description, quantize_outputs=outputs)


@hookimpl
def register_backends(register):
    register(_profile("generic", "int8 Conv/Gemm/MatMul, per-channel or per-tensor weights, "
                      "symmetric activations", _CONV_FC))
    register(_profile("onnxruntime", "onnxruntime QDQ: int8/uint8 activations, per-channel weights",
                      _CONV_FC, activations=("symmetric", "asymmetric"), unsigned=True))
    register(_profile("generic-per-tensor", "per-tensor weights and activations only", _CONV_FC,
                      weights=("per-tensor",)))
