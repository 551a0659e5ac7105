"""TensorRT's int8 calibration is the ONNX backend's streamed calibrator (``evit_deploy.onnx.calibrate``)."""
from evit_deploy.onnx.calibrate import GROUP_BYTES, METHODS, required_bytes, stream_ranges

__all__ = ["GROUP_BYTES", "METHODS", "required_bytes", "stream_ranges"]
