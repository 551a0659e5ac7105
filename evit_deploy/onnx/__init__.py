"""The ONNX backend: torch -> ONNX export (shared with TensorRT's typed ONNX) and the ONNX Runtime runner."""
