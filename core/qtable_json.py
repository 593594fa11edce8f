"""ptqconv's own table format (``.json``), registered as the built-in ``table_json`` plugin."""
import json

from ptqconv.core.atomic import write_text_atomic
from ptqconv.core.errors import PtqconvError
from ptqconv.core.hookspecs import hookimpl
from ptqconv.core.qtable import QuantTable
from ptqconv.core.records import TableFormat


def read_json_table(path, graph=None):
    """Read a ptqconv JSON table written by :func:`write_json_table`."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise PtqconvError(f"{path}: table file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PtqconvError(f"{path}: cannot read table: {exc}") from None
    except json.JSONDecodeError as exc:
        raise PtqconvError(f"{path} (line {exc.lineno}): invalid JSON: {exc.msg}") from None
    return QuantTable.from_dict(data, source=path)


def write_json_table(table, graph, path):
    """Write ``table`` as indented JSON (versioned)."""
    write_text_atomic(path, json.dumps(table.to_dict(), indent=1) + "\n")


@hookimpl
def register_table_formats(register):
    register(TableFormat("ptqconv-json", (".json",), read_json_table, write_json_table,
                         "ptqconv's versioned table: activation/weight scales, layer precision"))
