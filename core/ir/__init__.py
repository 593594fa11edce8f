"""The float-graph IR: ONNX op names, named tensors, numpy constants."""
from ptqconv.core.ir.graph import Graph, Node, TensorInfo

__all__ = ["Graph", "Node", "TensorInfo"]
