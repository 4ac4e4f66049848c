"""Fine-tune keras.applications' ImageNet EfficientNet-B0 on a folder of images, SD on.

A folder of images: one sub-folder per class (``DIR/cat/*.jpg``, ``DIR/dog/*.png``); 10% of
the files (by a stable hash of their path) are held out for eval. Weights: keras.applications'
``efficientnetb0_notop.h5`` (downloaded once by ``keras.applications.EfficientNetB0()`` into
``~/.keras/models/``, or give any path); a new head ("predictions") is trained alone for 200
steps, then everything, at 224 px with per-sample stochastic depth (survival 0.8).

Command:
  python -m tfsd.train --config=finetune_efficientnet_b0 --config.data.name=folder:/path/to/DIR \\
      --model_dir=DIR [--config.init.from=PATH.h5]
  runlocal (offline synthetic data, random init, 2 CPU cores):
      --config=finetune_efficientnet_b0:runlocal

Expected accuracy: depends on your images; not measured here (no ImageNet weights offline).
Run time: not measured here. runlocal: about a minute on 2 CPU cores.
"""

from tfsd import config_lib


def get_config(arg=None):
    return config_lib.finetune_efficientnet("efficientnet_b0", arg)
