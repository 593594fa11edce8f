"""The MNN format plugin: ``.mnn`` reader and the ``mnn`` / ``mnn-int8`` writers.

Modules: ``fb`` (bounds-checked FlatBuffers access) and ``fbwrite`` (serializer on the
``flatbuffers`` runtime, needed for writing only); ``schema`` (enum values and field slots, written
by hand from shared/specs/mnn.md); ``reader`` (file -> validated op records), ``imports*`` /
``toir`` (MNN ops -> IR, layouts, int8 dequantization); ``netbuild`` / ``export`` (IR -> MNN ops,
NCHW/NC4HW4 ConvertTensor placement); ``int8plan`` + ``idst`` (MNN 3.x int8 layout: IDSTQuan
weights, per-tensor quantInfo); ``runtime`` (runs files with the MNN pip package; never used to
read or write); ``plugin`` (registration).
"""
