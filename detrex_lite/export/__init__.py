"""Deployment and analysis helpers: ONNX export with its onnxruntime check
(:mod:`detrex_lite.export.onnx_export`) and parameter/FLOP counting (:mod:`detrex_lite.export.flops`).

The submodules are imported on use (``from detrex_lite.export.onnx_export import export_onnx``)
so that importing the package pulls in neither onnx nor fvcore.
"""
