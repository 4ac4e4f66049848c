"""keras.applications architectures trained from scratch with stochastic depth added by rewriting.

Command (ResNet50 shown; any variant):
  python -m tfsd.train --config=keras_applications_ResNet50 --model_dir=DIR --data_dir=TFDS_DIR
  runlocal (offline synthetic data, 2 CPU cores): --config=keras_applications_ResNet50:runlocal

The model is ``keras.applications.<VARIANT>(weights=None)`` rewritten by
``tfsd.models.add_stochastic_depth`` (``model.name = "keras_applications/<VARIANT>"``, see
``tfsd.models.keras_applications`` and docs/rewrite.md): every residual block becomes a
``StochasticResidual`` with batch-wise skipping, linear rule, p_L = 0.5 (the paper's ImageNet
setting, Huang et al. 2016), inverted scaling (keras.applications' convention: the inference
graph is keras.applications' own). Recipe: fb.resnet.torch's ImageNet schedule
(``tfsd.config_lib.imagenet_resnet``: SGD + Nesterov, lr 0.1 × batch / 256, 90 epochs).
Override any stochastic-depth field as for tfsd's models, e.g. ``--config.model.sd_mode=sample``.

Argument: ``VARIANT[,runlocal]``, VARIANT one of ``VARIANTS``.
Expected accuracy and run time: not measured here (no accelerator in this project's CI).
"""

import ml_collections

from tfsd import config_lib
from tfsd.models import keras_applications

VARIANTS = tuple(keras_applications.ARCHITECTURES)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The recipe for the keras.applications architecture named by ``arg``."""
    variant, runlocal = config_lib.parse_variant(
        arg, VARIANTS, "keras.applications", "--config=keras_applications_VARIANT[:runlocal]"
    )
    c = config_lib.imagenet_resnet(
        keras_applications.PREFIX + variant, "runlocal" if runlocal else None
    )
    c.model.survival_prob = 0.5
    c.model.sd_scale_at = "train"
    if runlocal:  # the full architecture at 32 px, a short run
        c.data.synthetic_train_size = 512
        c.data.synthetic_eval_size = 128
        c.num_epochs = 1.0
        c.model.overrides = ml_collections.ConfigDict()  # no width override (not a tfsd builder)
    return c
