"""EfficientNet-B0 on ImageNet with per-sample stochastic depth (survival 0.8), TPU recipe.

Command:
  python -m tfsd.train --config=efficientnet_b0 --config.distribute.strategy=tpu \
      --config.distribute.tpu=local --data_dir=gs://BUCKET/tfds --model_dir=gs://BUCKET/b0
  runlocal (offline synthetic data, 2 CPU cores): --config=efficientnet_b0:runlocal

Expected: top-1 76.3% on ImageNet (Tan & Le 2019, Table 2), 350 epochs at batch 4096.
Run time: not measured here (no accelerator in this project's CI); the recipe is the TF TPU
reference's. runlocal: a few minutes on 2 CPU cores, see README for the measured time/accuracy.
"""

from tfsd import config_lib


def get_config(arg=None):
    return config_lib.efficientnet("efficientnet_b0", arg)
