"""Accuracy diagnosis of quantized models: per-layer metrics (own vs accumulated error),
sensitivity ranking, automatic mixed precision and the report (``ptqconv diagnose``,
``--report``, ``quantize.auto_mixed``)."""
