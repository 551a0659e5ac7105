"""Thin adapters, one module per deployment target, each a ``Target`` registered by name.

The work lives in the backend packages one floor down (``evit_deploy.onnx``, ``tflite``,
``coreml``, ``trt``); an adapter says what the target is called, what it needs, which
recipes it accepts, and hands export and running to its backend.
"""
