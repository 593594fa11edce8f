"""Seed-tool dialects: the command lines and config files of ncnn, MNN, Tengine, TNN and
MindSpore Lite, each mapped onto a ptqconv config (``--print-config`` shows it as YAML).

One module per tool registers its commands through the ``register_commands`` hook;
:mod:`ptqconv.plugins.dialects.common` holds what they share.
"""
