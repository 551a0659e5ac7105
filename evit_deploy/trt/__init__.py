"""TensorRT, in two halves.

Decided and checked here, without a GPU (importing these needs neither torch nor tensorrt):

* ``options``  the target's recipe options and every rule about combining them;
* ``plan``     the build plan (``NAME.trt-plan.json``) and the trtexec command for each TensorRT major;
* ``typed``    the typed ONNX (fp16 with fp32 islands behind Casts) and the fp16 overflow check;
* ``int8``     Q/DQ quantisation calibrated on the CPU, with a calibration cache;
* ``inspect``  reading an engine's layer information and checking the planned fp32 islands in it.

Needs an NVIDIA GPU with TensorRT (imported lazily, only when called):

* ``build``    plan + ONNX -> engine + build report (also ``python -m evit_deploy.trt.build PLAN``);
* ``runtime``  the Runner: device buffers, CUDA events, CUDA graphs.
"""
