"""The tnn format plugin: reader ``tnn``, writers ``tnn`` (fp32, ``--option fp16=1``) and
``tnn-int8`` for the ``.tnnproto`` + ``.tnnmodel`` pair."""
from ptqconv.core.hookspecs import hookimpl
from ptqconv.core.records import ModelFormat
from ptqconv.formats.tnn.binary import MAGIC_V1, MAGIC_V2
from ptqconv.formats.tnn.reader import read_tnn
from ptqconv.formats.tnn.writer import write_tnn


def sniff_tnn(path) -> bool:
    """True when ``path`` starts like a .tnnproto: header ``"1 <n> 1 <magic> ,"``."""
    with open(path, "rb") as f:
        head = f.read(128)
    try:
        text = head.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        return False
    tokens = text.replace('"', "").split(",")[0].split()
    return len(tokens) >= 4 and tokens[3] in (str(MAGIC_V1), str(MAGIC_V2))


@hookimpl
def register_formats(register):
    register(ModelFormat(
        name="tnn", description="TNN .tnnproto + .tnnmodel; int8 as quantization_cmd writes it "
        "(Quantized* layers, <blob>_scale_data_ blob scales)",
        extensions=(".tnnproto",), companions=(".tnnmodel",), read=read_tnn, write=write_tnn,
        sniff=sniff_tnn, quantized=("int8",), backend="tnn-cpu",
        write_passes=("fuse_activation",)))
