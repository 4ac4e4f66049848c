"""The library that ships models (``docs/serving.md``, ``docs/tflite.md``).

SavedModels for TF Serving (``publish``, ``signatures``, ``warmup``, ``saved_model``), prediction
(``predict``) and TFLite (``tflite_convert``, ``tflite_verify``, ``tflite_fallback``,
``tflite_export``). Runs are read only through `tfsd.training.run_dir`.
"""
