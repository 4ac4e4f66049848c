"""EfficientNet-Lite0 on ImageNet (ReLU6, no SE; for int8 phones), the EfficientNet TPU recipe.

Command:
  python -m tfsd.train --config=configs/efficientnet_lite0.py --model_dir=DIR --data_dir=TFDS_DIR
  runlocal (offline synthetic data, 2 CPU cores): --config=efficientnet_lite0:runlocal

Expected: top-1 75.1% float / 74.4% int8 (TF EfficientNet-Lite reference, 4.7M parameters).
Run time: not measured here (no accelerator in this project's CI). runlocal: a few minutes on
2 CPU cores.
"""

from tfsd import config_lib


def get_config(arg=None):
    return config_lib.efficientnet("efficientnet_lite0", arg)
