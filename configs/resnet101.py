"""ResNet-101 (v1.5) on ImageNet with batch-wise stochastic depth (linear, p_L = 0.8);
fb.resnet.torch recipe.

Command:
  python -m tfsd.train --config=configs/resnet101.py --model_dir=DIR --data_dir=TFDS_DIR
  runlocal (offline synthetic data, 2 CPU cores): --config=resnet101:runlocal

Expected top-1 error: ~22.6% (torchvision v1.5, 77.4% top-1, without stochastic depth).
Run time: not measured here (no accelerator in this project's CI); 90 epochs at batch 256.
"""

from tfsd import config_lib


def get_config(arg=None):
    return config_lib.imagenet_resnet("resnet101", arg)
