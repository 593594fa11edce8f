"""The ncnn format plugin: registers its reader and writers with the ptqconv host."""
from ptqconv.core.hookspecs import hookimpl  # noqa: F401  (hooks are added as the format grows)
