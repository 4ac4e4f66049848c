"""ResNet-110 on CIFAR-10, the stochastic-depth paper's recipe (Huang et al. 2016, Sec. 4).

Batch-wise gates with compute skipping, linear decay to p_L = 0.5, 500 epochs, batch 128, SGD
Nesterov 0.9, lr 0.1 ÷10 at epochs 250 and 375, weight decay 1e-4, pad-4 crop + flip.

Command:
  python -m tfsd.train --config=cifar10_resnet110 --model_dir=DIR --data_dir=TFDS_DIR
  runlocal (offline synthetic data, 2 CPU cores): --config=cifar10_resnet110:runlocal

Expected test error: 5.25% (6.41% without stochastic depth), paper Table 1.
Run time: the paper measured 15h07m with stochastic depth vs 20h42m without on its 2016 GPU
(Table 2); not measured here. runlocal: see README for the measured time and accuracy.
"""

from tfsd import config_lib


def get_config(arg=None):
    return config_lib.cifar_resnet("cifar10", "cifar_resnet110", arg)
