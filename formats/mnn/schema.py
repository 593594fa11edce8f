"""MNN schema facts as data: enum values and table field slots (from shared specs/mnn.md §2-§5).

Written by hand from the spec; slot = declaration order of the field in its table, a union takes
two slots (type byte, then table offset).
"""

OP_TYPE = {
    "AbsVal": 0, "QuantizedAdd": 1, "BinaryOp": 7, "Cast": 9, "Concat": 10, "Const": 11,
    "Convolution": 12, "ConvolutionDepthwise": 13, "Crop": 14, "Deconvolution": 17,
    "DeconvolutionDepthwise": 18, "Dequantize": 19, "Dropout": 21, "Eltwise": 22, "ELU": 23,
    "Exp": 25, "ExpandDims": 26, "Fill": 27, "Flatten": 28, "Gather": 30, "GatherV2": 31,
    "InnerProduct": 33, "Input": 34, "Interp": 35, "Log": 36, "LRN": 37, "MatMul": 39, "Normalize": 43,
    "Pack": 44, "Padding": 45, "Permute": 46, "Pooling": 47, "PReLU": 49, "Range": 65,
    "Rank": 66, "Reduction": 68, "ReLU": 69, "ReLU6": 70, "Reshape": 73, "Resize": 74,
    "Scale": 77, "Selu": 78, "Shape": 80, "Sigmoid": 81, "Slice": 83, "SliceTf": 84,
    "Softmax": 85, "Squeeze": 90, "StridedSlice": 91, "TanH": 95, "Tile": 98, "Transpose": 100,
    "UnaryOp": 101, "Unpack": 102, "Where": 103, "BatchMatMul": 106, "Unsqueeze": 107,
    "Pooling3D": 112, "Convolution3D": 113, "Raster": 128, "ConvertTensor": 129, "ArgMin": 130,
    "Plugin": 256, "Select": 257, "BatchNorm": 267, "Attention": 299, "GroupNorm": 304, "Extra": 512,
    "ConvInt8": 513, "Int8ToFloat": 514, "DepthwiseConvInt8": 515, "FloatToInt8": 517,
    "EltwiseInt8": 518, "While": 600, "If": 601, "LayerNorm": 603, "GridSample": 604,
}
OP_NAME = {v: k for k, v in OP_TYPE.items()}

PARAM = {
    "NONE": 0, "QuantizedAdd": 1, "ArgMax": 2, "AsString": 3, "Axis": 4, "BatchNorm": 5,
    "BinaryOp": 6, "Blob": 7, "CastParam": 8, "Convolution2D": 9, "Crop": 10,
    "CropAndResize": 11, "Dequantize": 12, "DetectionOutput": 13, "Eltwise": 14,
    "ExpandDims": 15, "Fill": 16, "Flatten": 17, "Gather": 18, "GatherV2": 19,
    "InnerProduct": 20, "Input": 21, "Interp": 22, "LRN": 23, "LSTM": 24, "MatMul": 25,
    "NonMaxSuppressionV2": 26, "Normalize": 27, "PackParam": 28, "Permute": 29, "Plugin": 30,
    "Pool": 31, "PRelu": 32, "PriorBox": 33, "Proposal": 34, "Range": 47, "Rank": 48,
    "ReductionParam": 50, "Relu": 51, "Relu6": 52, "Reshape": 55, "Resize": 56, "Scale": 58,
    "Selu": 59, "Size": 60, "Slice": 61, "SliceTf": 62, "SqueezeParam": 64,
    "StridedSliceParam": 65, "TensorConvertInfo": 66, "Transpose": 69, "UnaryOp": 70,
    "QuantizedFloatParam": 74, "Extra": 78, "Pool3D": 79, "ELU": 81, "PadParam": 84,
    "LayerNorm": 88, "GridSample": 91,
}
PARAM_NAME = {v: k for k, v in PARAM.items()}

# MNN_DATA_FORMAT (byte)
NCHW, NHWC, NC4HW4, NHWC4, UNKNOWN_FORMAT = 0, 1, 2, 3, 4
FORMAT_NAME = {NCHW: "NCHW", NHWC: "NHWC", NC4HW4: "NC4HW4", NHWC4: "NHWC4",
               UNKNOWN_FORMAT: "UNKNOWN"}

# DataType (int)
DT_INVALID, DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8 = 0, 1, 2, 3, 4, 5, 6
DT_STRING, DT_INT64, DT_BOOL, DT_QINT8, DT_QUINT8, DT_QINT32 = 7, 9, 10, 11, 12, 13
DT_TO_NUMPY = {DT_FLOAT: "float32", DT_DOUBLE: "float64", DT_INT32: "int32", DT_UINT8: "uint8",
               DT_INT16: "int16", DT_INT8: "int8", DT_INT64: "int64", DT_BOOL: "bool",
               DT_QINT8: "int8", DT_QUINT8: "uint8", DT_QINT32: "int32"}
NUMPY_TO_DT = {"float32": DT_FLOAT, "int32": DT_INT32, "uint8": DT_UINT8, "int8": DT_INT8,
               "int64": DT_INT32, "bool": DT_INT32, "float64": DT_FLOAT, "int16": DT_INT32}

# NetSource
SOURCE_CAFFE, SOURCE_TENSORFLOW, SOURCE_TFLITE, SOURCE_ONNX, SOURCE_TORCH = 0, 1, 2, 3, 4


class Slots:
    """Field slots of one table (attribute name -> slot number)."""

    def __init__(self, **slots):
        self.__dict__.update(slots)


NET = Slots(bizCode=0, extraTensorDescribe=1, extraInfo=2, oplists=3, outputName=4,
            preferForwardType=5, sourceType=6, tensorName=7, tensorNumber=8, usage=9,
            subgraphs=10, mnn_uuid=11)
EXTRA_INFO = Slots(buffer=0, name=1, version=2)
OP = Slots(inputIndexes=0, main_type=1, main=2, name=3, outputIndexes=4, type=5,
           defaultDimentionFormat=6, externalPath=7)
TENSOR_DESCRIBE = Slots(blob=0, index=1, name=2, regions=3, quantInfo=4)
TENSOR_QUANT_INFO = Slots(scale=0, zero=1, min=2, max=3, type=4)
BLOB = Slots(dims=0, dataFormat=1, dataType=2, uint8s=3, int8s=4, int32s=5, int64s=6,
             float32s=7, strings=8, external=9)
INPUT = Slots(dims=0, dtype=1, dformat=2)
CONV2D = Slots(common=0, weight=1, bias=2, quanParameter=3, symmetricQuan=4,
               sparseParameter=5, external=6)
CONV2D_COMMON = Slots(padX=0, padY=1, kernelX=2, kernelY=3, strideX=4, strideY=5, dilateX=6,
                      dilateY=7, padMode=8, group=9, outputCount=10, inputCount=11, relu=12,
                      relu6=13, pads=14, outPads=15, hasOutputShape=16)
INNER_PRODUCT = Slots(outputCount=0, biasTerm=1, weightSize=2, weight=3, bias=4, axis=5,
                      transpose=6, quanParameter=7)
POOL = Slots(padX=0, padY=1, isGlobal=2, kernelX=3, kernelY=4, strideX=5, strideY=6, type=7,
             padType=8, dataType=9, ceilModel=10, pads=11, countType=12)
POOL3D = Slots(strides=0, kernels=1, pads=2, type=3, padType=4, isGlobal=5)
ELTWISE = Slots(type=0, coeff=1)
BINARY = Slots(opType=0, T=1, activationType=2)
UNARY = Slots(opType=0, T=1, tableInt8=2)
AXIS = Slots(axis=0)
RESHAPE = Slots(dims=0, dimType=1)
PERMUTE = Slots(dims=0)
TRANSPOSE = Slots(Tperm=0)
FLATTEN = Slots(axis=0, endAxis=1)
RELU = Slots(slope=0)
RELU6 = Slots(minValue=0, maxValue=1)
PRELU = Slots(slopeCount=0, slope=1)
MATMUL = Slots(T=0, transposeA=1, transposeB=2)
INTERP = Slots(widthScale=0, heightScale=1, outputWidth=2, outputHeight=3, resizeType=4,
               alignCorners=5, halfPixelCenters=6, widthOffset=7, heightOffset=8,
               cubicCoeffA=9, ctm=10)
TENSOR_CONVERT = Slots(source=0, dest=1)
SCALE = Slots(channels=0, scaleData=1, biasData=2, external=3)
PAD_PARAM = Slots(mode=0)
SLICE = Slots(axis=0, slicePoints=1, sourceType=2)
SQUEEZE = Slots(squeezeDims=0)
REDUCTION = Slots(operation=0, dim=1, coeff=2, keepDims=3, dType=4)
CAST = Slots(srcT=0, dstT=1)
IDST_QUAN = Slots(buffer=0, alpha=1, type=2, useInt32=3, quantScale=4, scaleIn=5, scaleOut=6,
                  aMaxOrBits=7, aMin=8, readType=9, has_scaleInt=10, shapeInt32=11,
                  weightSize=12, index=13, alphaFp16=14, scaleStorage=15)
QUANT_FLOAT = Slots(weight=0, bias=1, scale=2, tensorScale=3, method=4, nbits=5, zeroPoint=6,
                    outputZeroPoint=7, clampMin=8, clampMax=9, winogradAttr=10,
                    outputDataType=11, floatzeros=12)

# Enumerations used by parameters
BINARY_OPS = {"ADD": 0, "SUB": 1, "MUL": 2, "DIV": 3, "MAX_TEMP": 4, "MIN_TEMP": 5, "POW": 6,
              "REALDIV": 7, "MINIMUM": 8, "MAXIMUM": 9, "GREATER": 10, "GREATER_EQUAL": 11,
              "LESS": 12, "FLOORDIV": 13, "SquaredDifference": 14, "EQUAL": 15,
              "LESS_EQUAL": 16, "FLOORMOD": 17, "MOD": 19, "ATAN2": 20, "LOGICALOR": 21,
              "NOTEQUAL": 22}
UNARY_OPS = {"ABS": 0, "NEG": 1, "FLOOR": 2, "CEIL": 3, "SQUARE": 4, "SQRT": 5, "RSQRT": 6,
             "EXP": 7, "LOG": 8, "SIN": 9, "COS": 10, "TAN": 11, "ASIN": 12, "ACOS": 13,
             "ATAN": 14, "RECIPROCAL": 15, "LOG1P": 16, "BNLL": 17, "ACOSH": 18, "SINH": 19,
             "ASINH": 20, "ATANH": 21, "SIGN": 22, "ROUND": 23, "COSH": 24, "ERF": 25,
             "ERFC": 26, "ERFINV": 27, "EXPM1": 28, "SIGMOID": 29, "TANH": 30, "HARDSWISH": 31,
             "GELU": 32, "GELU_STANDARD": 33, "SILU": 34}
ELTWISE_PROD, ELTWISE_SUM, ELTWISE_MAX, ELTWISE_SUB = 0, 1, 2, 3
POOL_MAX, POOL_AVE = 0, 1
PAD_CAFFE, PAD_VALID, PAD_SAME = 0, 1, 2
COUNT_DEFAULT, COUNT_INCLUDE_PAD, COUNT_EXCLUDE_PAD = 0, 1, 2
REDUCE_OPS = {0: "ReduceSum", 3: "ReduceMean", 4: "ReduceMax", 5: "ReduceMin", 6: "ReduceProd"}
