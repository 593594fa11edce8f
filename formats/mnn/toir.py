"""Entry point of the MNN -> IR conversion (loads every importer module)."""
from ptqconv.formats.mnn import imports_conv, imports_ops  # noqa: F401  (register importers)
from ptqconv.formats.mnn.imports import Importer


def net_to_ir(net):
    """(Graph, QuantTable or None) of a parsed :class:`~ptqconv.formats.mnn.reader.MnnNet`."""
    return Importer(net).run()
