"""Whole-model speed and memory (``tools/benchmark.py``, ``tools/time_checkout.py``).

* :mod:`.options`: the two tools' argument parsers (stdlib only: ``--help`` needs no torch);
* :mod:`.runner`: builds the models, plans the rows and times them in rounds;
* :mod:`.measure`: synthetic inputs and the timed inference / training / matmul loops;
* :mod:`.report`: the printed table, progress lines, ratios and the environment record;
* :mod:`.hf_adapter`: Hugging Face transformers' Deformable DETR with a config's architecture;
* :mod:`.onnxruntime_adapter`: onnxruntime on the exported model, behind the model's call;
* :mod:`.checkout`: the model as another checkout builds it, timed in a subprocess
  (:mod:`.checkout_worker` is what that subprocess runs).

The submodules are imported on use, so importing the package pulls in nothing heavy.
"""
