"""The Core ML backend: coremltools conversion, fp16 islands, compression, and the runners (macOS or MIL)."""
