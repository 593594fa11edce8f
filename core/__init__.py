"""ptqconv core: IR, hook specs, plugin manager, quantization core, calibration engine, CLI."""
