"""Stand-in for TensorRT's Python bindings where TensorRT cannot be installed (tests only).

TensorRT's wheels fetch their libraries from pypi.nvidia.com at install time, so the real
bindings cannot exist on the test machine. This module reproduces, on the subprocess PYTHONPATH
of a test, only what TensorRT does in the two failures evit must report in one line:

* ``EVIT_FAKE_TRT=no-gpu``: ``Builder``/``Runtime`` log TensorRT's CUDA-initialisation warnings
  and raise pybind11's ``TypeError: pybind11::init(): factory function returned nullptr``
  (the output quoted in NVIDIA/TensorRT#2913 and NVIDIA/trt-samples-for-hackathon-cn#103);
* ``EVIT_FAKE_TRT=build-fails``: the ONNX parses and ``build_serialized_network`` logs
  TensorRT 10.12's error (NVIDIA/TensorRT#4511) and returns None, as the real binding does.
"""
import enum
import os

__version__ = os.environ.get("EVIT_FAKE_TRT_VERSION", "10.3.0")
MODE = os.environ.get("EVIT_FAKE_TRT", "no-gpu")
NO_GPU_LOG = ("Unable to determine GPU memory usage",
              ("CUDA initialization failure with error: 35. Please check your CUDA installation:  "
               "http://docs.nvidia.com/cuda/cuda-installation-guide-linux/index.html"))
BUILD_ERROR = ("IBuilder::buildSerializedNetwork: Error Code 10: Internal Error (Could not find any implementation "
               "for node {ForeignNode[or_constant_out + ONNXTRT_Broadcast...node_of_output]}.)")


class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    def __init__(self):
        pass


class Logger(ILogger):
    WARNING = ILogger.Severity.WARNING

    def __init__(self, severity=None):
        super().__init__()

    def log(self, severity, msg):
        pass


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 5


class ProfilingVerbosity(enum.IntEnum):
    LAYER_NAMES_ONLY = 0
    NONE = 1
    DETAILED = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class BuilderFlag(enum.IntEnum):
    GPU_FALLBACK = 3
    TF32 = 7


def _start(logger):
    if MODE == "no-gpu":
        for line in NO_GPU_LOG:
            logger.log(ILogger.Severity.WARNING, line)
        raise TypeError("pybind11::init(): factory function returned nullptr")


class _Config:
    profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY

    def set_memory_pool_limit(self, pool, size):
        pass

    def clear_flag(self, flag):
        pass

    def set_flag(self, flag):
        pass

    def create_timing_cache(self, data):
        return bytes(data)

    def set_timing_cache(self, cache, ignore_mismatch):
        pass


class Builder:
    def __init__(self, logger):
        _start(logger)
        self.logger = logger
        self.num_DLA_cores = 0

    def create_network(self, flags=0):
        return object()

    def create_builder_config(self):
        return _Config()

    def build_serialized_network(self, network, config):
        """Logs the builder's error; the real binding then returns None."""
        self.logger.log(ILogger.Severity.ERROR, BUILD_ERROR)


class Runtime:
    def __init__(self, logger):
        _start(logger)


class OnnxParser:
    num_errors = 0

    def __init__(self, network, logger):
        pass

    def parse_from_file(self, path):
        return True
