"""EfficientNet-B0…B7 and -Lite0…4 on ImageNet, per-sample stochastic depth, the TF TPU recipe.

Command (B3 shown; any variant):
  python -m tfsd.train --config=efficientnet_b3 --config.distribute.strategy=tpu \\
      --config.distribute.tpu=local --data_dir=gs://BUCKET/tfds --model_dir=gs://BUCKET/b3
  runlocal (offline synthetic data, 2 CPU cores): --config=efficientnet_b3:runlocal

Recipe (Tan & Le 2019, the TF TPU reference): RMSProp decay 0.9 / momentum 0.9 / eps 1e-3 (TF1's:
mean squares start at 1), lr 0.016 × batch / 256 with 5 warm-up epochs and ×0.97 every 2.4
epochs, weight decay 1e-5, label smoothing 0.1, EMA 0.9999, 350 epochs, RandAugment (2 ops,
magnitude 9), bfloat16, drop-connect 0.2 → survival 0.8 per sample (inverted scaling,
EfficientNet's r·i/N schedule).

Argument: ``VARIANT[,runlocal]``, VARIANT one of ``VARIANTS`` (b0…b7, lite0…lite4: every
``efficientnet_*`` model of the registry). ``--config=efficientnet_b3[:runlocal]`` is resolved
by the config loader (``tfsd.config_names.resolve_config_path``) to this file with the argument
``b3[,runlocal]``, so ``--config=efficientnet:b3,runlocal`` and
``--config=configs/efficientnet.py:b3,runlocal`` are the same config. A variant not in the list
is an error that lists the valid ones.

Expected ImageNet top-1, 350 epochs at batch 4096:
  b0…b7: 76.3 / 78.8 / 79.8 / 81.1 / 82.6 / 83.3 / 84.0 / 84.4% (Tan & Le 2019, Table 2).
  lite0…lite4: 75.1 / 76.7 / 77.6 / 79.8 / 81.5% float, 74.4 / 75.9 / 77.0 / 79.0 / 80.2% int8
  (TF EfficientNet-Lite reference).
Run time: not measured here (no accelerator in this project's CI); the recipe is the TF TPU
reference's. runlocal: a few minutes on 2 CPU cores (B0: 93 s, see README for the measured
time and accuracy).

The recipe lives here rather than in ``tfsd.config_lib`` because this family file is its only
user: every hyperparameter of an EfficientNet run is on this page. The resolution of each variant
comes from the model registry (``ModelInfo.input_size``), written once in
``tfsd.models.efficientnet``'s variant table.
"""

import ml_collections

from tfsd import config_lib, models

# Variant names, in the registry's order: b0…b7, lite0…lite4.
VARIANTS = tuple(
    name.removeprefix("efficientnet_")
    for name in models.list_models()
    if name.startswith("efficientnet_")
)


def parse_arg(arg: str | None) -> tuple[str, bool]:
    """``"b3"`` → ``("b3", False)``, ``"b3,runlocal"`` → ``("b3", True)``; else ValueError."""
    return config_lib.parse_variant(
        arg, VARIANTS, "EfficientNet",
        "--config=efficientnet_VARIANT[:runlocal], or --config=efficientnet:VARIANT[,runlocal]",
    )  # fmt: skip


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The EfficientNet TPU recipe for the variant named by ``arg`` (see the module docstring)."""
    variant, runlocal = parse_arg(arg)
    c = config_lib.base_config()
    config_lib.set_model(c, f"efficientnet_{variant}")
    c.model.survival_prob = 0.8  # drop-connect rate 0.2, per sample, EfficientNet schedule
    c.model.sd_mode = "sample"
    c.model.sd_scale_at = "train"
    c.data.name = "imagenet2012"
    c.data.randaugment_num_ops = 2
    c.data.randaugment_magnitude = 9
    c.batch_size = 4096
    c.num_epochs = 350.0
    c.optimizer.name = "rmsprop"
    c.optimizer.rho = 0.9
    c.optimizer.momentum = 0.9
    c.optimizer.epsilon = 1e-3
    c.optimizer.weight_decay = 1e-5
    c.lr.base = 0.016  # × batch / 256
    c.lr.scale_by_batch = True
    c.lr.warmup_epochs = 5.0
    c.lr.schedule = "exponential"
    c.lr.decay_rate = 0.97
    c.lr.decay_epochs = 2.4
    c.label_smoothing = 0.1
    c.ema_decay = 0.9999
    c.precision = "bfloat16"
    c.steps_per_loop = 500
    c.checkpoint_every_steps = 5000
    if runlocal:
        config_lib.runlocal(c, width=0.25, depth=0.25)
        c.optimizer.name = "sgd"  # RMSProp with warm-up is tuned for 350 epochs, not 3 minutes
        c.optimizer.nesterov = True
        c.lr.base = 0.05
        c.lr.warmup_epochs = 0.5
        c.lr.schedule = "cosine"
        c.label_smoothing = 0.0
        c.data.synthetic_train_size = 8192
        c.data.synthetic_eval_size = 1024
        c.num_epochs = 4.0
    return c
