"""The ONNX ops the IR accepts (default domain). Readers map their layers onto these names."""

SUPPORTED_OPS = frozenset("""
Abs Acos Add And ArgMax ArgMin Asin Atan AveragePool BatchNormalization Cast Ceil Celu Clip Concat
Constant ConstantOfShape Conv ConvTranspose Cos DepthToSpace DequantizeLinear Div Dropout Einsum
Elu Equal Erf Exp Expand Flatten Floor Gather GatherElements Gemm GlobalAveragePool GlobalMaxPool
Greater GreaterOrEqual GroupNormalization HardSigmoid HardSwish Identity InstanceNormalization
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax LRN MatMul Max MaxPool Mean Min Mish
Mod Mul Neg Not Or Pad Pow PRelu QuantizeLinear Reciprocal ReduceL2 ReduceMax ReduceMean ReduceMin
ReduceProd ReduceSum Relu Reshape Resize Round Selu Shape Sigmoid Sign Sin Slice Softmax Softplus
Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh Tile TopK Transpose Unsqueeze Upsample
Where Xor Range Gelu Size NonZero ScatterND ScatterElements GatherND CumSum
""".split())

# Ops whose weights ptqconv quantizes, and the axis of their weight's output channel.
WEIGHTED_OPS = {"Conv": 0, "ConvTranspose": 1, "Gemm": None, "MatMul": 1}

# Element-wise activations a writer may fuse into the producing Conv/Gemm.
ACTIVATION_OPS = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish",
                            "Mish", "Tanh", "Elu", "Selu"})
