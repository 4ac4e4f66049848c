"""ResNet-152 (v1.5) on ImageNet with batch-wise stochastic depth (linear, p_L = 0.8);
fb.resnet.torch recipe.

Command:
  python -m tfsd.train --config=configs/resnet152.py --model_dir=DIR --data_dir=TFDS_DIR
  runlocal (offline synthetic data, 2 CPU cores): --config=resnet152:runlocal

Expected top-1 error: ~21.7% (torchvision v1.5, 78.3% top-1, without stochastic depth); no
published number for p_L = 0.8. The paper's 21.98% (vs 21.78% without; Huang et al. 2016, Sec. 4:
no gain at this scale) was measured at p_L = 0.5: --config.model.survival_prob=0.5 trains that.
Run time: not measured here (no accelerator in this project's CI); 90 epochs at batch 256.
"""

from tfsd import config_lib


def get_config(arg=None):
    return config_lib.imagenet_resnet("resnet152", arg)
