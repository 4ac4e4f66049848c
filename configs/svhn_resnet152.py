"""152-layer CIFAR-style ResNet on SVHN (train+extra), the stochastic-depth paper's recipe.

Batch-wise gates with compute skipping, linear decay to p_L = 0.5, 50 epochs, batch 128, lr 0.1
÷10 at epochs 30 and 35, no augmentation (Huang et al. 2016, Sec. 4).

Command:
  python -m tfsd.train --config=svhn_resnet152 --model_dir=DIR --data_dir=TFDS_DIR
  runlocal (offline synthetic data, 2 CPU cores): --config=svhn_resnet152:runlocal

Expected test error: 1.75% (1.80% without stochastic depth), paper Table 1.
Run time: the paper measured 25h33m with stochastic depth vs 33h43m without (Table 2).
"""

from tfsd import config_lib


def get_config(arg=None):
    return config_lib.svhn_resnet("cifar_resnet152", arg)
