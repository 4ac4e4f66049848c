"""Training configurations: the schema, the published recipes and their ``runlocal`` modes.

The recipes here are shared by several config files in ``configs/`` (one-liners over them), so
each hyperparameter is written once. A recipe with a single config file lives in that file:
the EfficientNet TPU recipe is in ``configs/efficientnet.py``, the family file of every
EfficientNet variant. Sources (see ``../shared/REFERENCES.md``):

* CIFAR / SVHN ResNets: Huang et al. 2016 (SGD with Nesterov momentum 0.9, lr 0.1 divided by 10
  at 50% and 75% of 500 epochs, batch 128, weight decay 1e-4, linear decay to p_L = 0.5, whole
  batch gates).
* ImageNet ResNets: fb.resnet.torch, the recipe of the paper's ImageNet experiment (SGD momentum
  0.9, lr 0.1 × batch / 256 divided by 10 every 30 of 90 epochs, weight decay 1e-4).

No number is repeated from elsewhere: a recipe names its model and takes the model's input size
from the registry (`set_model`, ``ModelInfo.input_size``) and dataset statistics from
`tfsd.models.common`.

Every recipe accepts the argument ``runlocal``: the same model family shrunk in width and
resolution, on the offline ``synthetic`` dataset, sized to train in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import difflib
import inspect

import ml_collections
from ml_collections import config_dict

from tfsd import data as data_lib
from tfsd import distribute, models
from tfsd.models import common


class ConfigError(ValueError):
    """An invalid training config, found before anything is written (``tfsd.train`` prints it
    as one line)."""


# The builder keyword arguments a config may set in ``model.overrides`` (``--config.model.
# overrides.rule=linspace``), with their types: the ones docs/models.md and docs/layers.md
# document. ml_collections accepts a command-line override only for a field that exists, so each
# is declared as a typed placeholder (None = the builder's default, not passed to it); an unknown
# key gets ml_collections' close-match error. ``depth`` is EfficientNet's depth multiplier.
MODEL_OVERRIDES: dict[str, type] = {
    # Stochastic depth (tfsd.models.common.SD_KEYWORDS; survival_prob, sd_mode and sd_scale_at
    # are fields of config.model itself).
    "rule": str,
    "seed": int,
    "sync_replicas": bool,
    "sample_skip": bool,
    "sample_skip_min_drop": float,
    # Architecture.
    "width": float,
    "depth": float,
    "dropout": float,
    "mean": tuple,
    "std": tuple,
    "bn_momentum": float,
    "bn_epsilon": float,
    "zero_init_residual": bool,
}

# Fields added after runs were written: a config.json without them holds these values.
NEW_FIELD_DEFAULTS = {
    "init.source": "",
    "init.skip": "",
    "init.freeze_steps": 0,
    "init.arch": "",
    **{f"model.overrides.{k}": None for k in MODEL_OVERRIDES},
    "data.source_dir": "",
    "data.accept_checksums": False,
}

# Fields that may differ between a run and its resumption: they change how long a run goes and
# how it reports, never what one training step computes.
RUN_LENGTH_FIELDS = (
    "total_steps",
    "steps_per_loop",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "eval_every_steps",
    "eval_steps",
    "log_every_steps",  # removed (see validate); still in older runs' config.json
    # The strategy is how a step is run, not what it computes: a run may resume on other
    # hardware (the global batch, and so every step's data, stays the same).
    "distribute.strategy",
    "distribute.tpu",
    # Where a TFDS dataset is prepared from, once: the prepared data is what a step reads.
    "data.source_dir",
    "data.accept_checksums",
)
PRECISIONS = ("float32", "bfloat16", "float16")
OPTIMIZERS = ("sgd", "rmsprop", "adamw")
LR_SCHEDULES = ("constant", "step", "exponential", "cosine")
STRATEGIES = distribute.STRATEGIES
SYNC_BN = ("auto", "on", "off")


def base_config() -> ml_collections.ConfigDict:
    """Every training field with its default; recipes below fill in the published values."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Model: a registry key of tfsd.models plus stochastic-depth settings (see create_model).
    c.model = ml_collections.ConfigDict()
    c.model.name = ""
    c.model.num_classes = 0  # 0: take the dataset's class count
    c.model.image_size = 224
    c.model.survival_prob = 1.0  # p_L; 1.0 turns stochastic depth off
    c.model.sd_mode = "batch"
    c.model.sd_scale_at = "inference"
    # BatchNorm over the global batch (cross-replica): "auto" = on for EfficientNet with several
    # replicas (TPU recipe), off for ResNets; see tfsd.training.task.use_sync_bn.
    c.model.sync_bn = "auto"
    # Builder keyword arguments (`MODEL_OVERRIDES`); None = the builder's default.
    c.model.overrides = ml_collections.ConfigDict(
        {k: config_dict.placeholder(t) for k, t in MODEL_OVERRIDES.items()}
    )
    c.data = data_lib.default_config()
    c.batch_size = 128  # global, over all replicas
    c.num_epochs = 1.0  # the schedule's length
    c.total_steps = 0  # where to stop; 0 = num_epochs worth of steps (run-length field)
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "sgd"
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.rho = 0.9  # RMSProp decay
    c.optimizer.epsilon = 1e-3  # RMSProp / AdamW epsilon
    # sgd/rmsprop: L2 term 0.5·wd·Σw² in the loss; adamw: decoupled decay w -= lr·wd·w (no loss
    # term). Kernels only: BN and biases excluded.
    c.optimizer.weight_decay = 1e-4
    c.optimizer.grad_clip_norm = 0.0  # clip the all-reduced gradient's global norm; 0 = off
    c.lr = ml_collections.ConfigDict()
    c.lr.base = 0.1  # per 256 examples when scale_by_batch, else absolute
    c.lr.scale_by_batch = False  # lr = base × batch_size / 256
    c.lr.warmup_epochs = 0.0
    c.lr.schedule = "step"
    c.lr.step_boundaries = (0.5, 0.75)  # fractions of num_epochs
    c.lr.step_factor = 0.1
    c.lr.decay_rate = 0.97  # exponential: × decay_rate every decay_epochs (staircase)
    c.lr.decay_epochs = 2.4
    c.label_smoothing = 0.0
    c.ema_decay = 0.0  # 0 = no EMA; else eval and export use the EMA weights
    c.precision = "float32"
    c.jit_compile = False  # XLA; off by default on CPU, where it is several times slower
    # Training steps per host call (run-length field); also the train summary and log interval
    # (shorter at checkpoint and eval boundaries), as Orbit's summary_interval defaults to it.
    c.steps_per_loop = 50
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.eval_every_steps = 0  # 0 = at the end only
    c.eval_steps = 0  # 0 = the whole eval split
    c.deterministic = False  # tf.config.experimental.enable_op_determinism()
    # Fine-tuning (tfsd.training.finetune.initialize_from), applied when a fresh run starts, not on
    # resume. init.from: "" (random init), keras.applications weights (.h5 / .weights.h5), a
    # .keras model file, a torchvision/timm ResNet state dict (.safetensors), or another run's
    # directory or checkpoint prefix. init.skip: comma-separated layer names left as initialised
    # (the head, "predictions", when class counts differ). init.freeze_steps: for that many
    # steps only the skipped layers (else "predictions") get gradient updates.
    c.init = ml_collections.ConfigDict()
    c.init.source = ""  # --config.init.from=PATH is an alias (tfsd.train)
    c.init.skip = ""
    c.init.freeze_steps = 0
    # The PyTorch EfficientNet source (tfsd.models.load_pretrained arch=): needed for timm's
    # (e.g. "tf_efficientnet_lite0"), guessed for lukemelas' .pth files.
    c.init.arch = ""
    c.distribute = ml_collections.ConfigDict()
    # auto | default | one_device | mirrored | multi_worker_mirrored | tpu (tfsd.distribute).
    c.distribute.strategy = "default"
    c.distribute.tpu = ""  # tpu: "local" on a TPU VM, a TPU name, or grpc://HOST:8470
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    """Raises `ConfigError` naming the first invalid field of a resolved config.

    Checks what the config alone decides; what needs the dataset (its size against the batch)
    is checked by `tfsd.training.loop.train_and_evaluate` before it writes anything.
    """

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(f"Invalid config: {msg}")

    need(
        "log_every_steps" not in c,
        "log_every_steps was removed: train summaries and log lines are written after every "
        "host loop, so steps_per_loop sets their interval",
    )
    need(bool(c.model.name), "model.name is empty")
    need(c.model.image_size >= 8, f"model.image_size={c.model.image_size} must be >= 8")
    need(0.0 < c.model.survival_prob <= 1.0, "model.survival_prob must be in (0, 1]")
    need(c.model.sd_mode in ("batch", "sample"), f"model.sd_mode={c.model.sd_mode!r}")
    need(
        c.model.sd_scale_at in ("inference", "train"), f"model.sd_scale_at={c.model.sd_scale_at!r}"
    )
    need(c.model.sync_bn in SYNC_BN, f"model.sync_bn={c.model.sync_bn!r} not in {SYNC_BN}")
    _check_model_overrides(c, need)
    need(c.batch_size >= 1, f"batch_size={c.batch_size} must be >= 1")
    need(c.num_epochs > 0, f"num_epochs={c.num_epochs} must be > 0")
    need(c.total_steps >= 0, f"total_steps={c.total_steps} must be >= 0")
    need(c.optimizer.name in OPTIMIZERS, f"optimizer.name={c.optimizer.name!r} not in {OPTIMIZERS}")
    need(0.0 <= c.optimizer.momentum < 1.0, "optimizer.momentum must be in [0, 1)")
    need(0.0 <= c.optimizer.rho < 1.0, "optimizer.rho must be in [0, 1)")
    need(c.optimizer.epsilon > 0, "optimizer.epsilon must be > 0")
    need(c.optimizer.weight_decay >= 0, "optimizer.weight_decay must be >= 0")
    need(
        c.optimizer.grad_clip_norm >= 0,
        f"optimizer.grad_clip_norm={c.optimizer.grad_clip_norm} must be >= 0 (0 = no clipping)",
    )
    need(c.lr.base > 0, "lr.base must be > 0")
    need(c.lr.schedule in LR_SCHEDULES, f"lr.schedule={c.lr.schedule!r} not in {LR_SCHEDULES}")
    need(c.lr.warmup_epochs >= 0, "lr.warmup_epochs must be >= 0")
    need(
        list(c.lr.step_boundaries) == sorted(c.lr.step_boundaries)
        and all(0 < b < 1 for b in c.lr.step_boundaries),
        "lr.step_boundaries must be increasing fractions in (0, 1)",
    )
    need(c.lr.step_factor > 0, f"lr.step_factor={c.lr.step_factor} must be > 0")
    need(c.lr.decay_rate > 0, f"lr.decay_rate={c.lr.decay_rate} must be > 0")
    # 0 used to become one step (lr × decay_rate after every step); a negative value raised
    # the lr: both silently.
    need(c.lr.decay_epochs > 0, f"lr.decay_epochs={c.lr.decay_epochs} must be > 0")
    need(0.0 <= c.label_smoothing < 1.0, "label_smoothing must be in [0, 1)")
    need(0.0 <= c.ema_decay < 1.0, "ema_decay must be in [0, 1)")
    need(c.precision in PRECISIONS, f"precision={c.precision!r} not in {PRECISIONS}")
    need(c.steps_per_loop >= 1, "steps_per_loop must be >= 1")
    need(c.checkpoint_every_steps >= 1, "checkpoint_every_steps must be >= 1")
    need(c.keep_checkpoints >= 1, "keep_checkpoints must be >= 1")
    # A negative interval made every host loop zero steps long: the loop evaluated forever.
    need(
        c.eval_every_steps >= 0,
        f"eval_every_steps={c.eval_every_steps} must be >= 0 (0 = at the end only)",
    )
    need(c.eval_steps >= 0, f"eval_steps={c.eval_steps} must be >= 0 (0 = the whole split)")
    need(c.init.freeze_steps >= 0, "init.freeze_steps must be >= 0")
    need(
        c.distribute.strategy in STRATEGIES,
        f"distribute.strategy={c.distribute.strategy!r} not in {STRATEGIES}",
    )


def model_overrides(c: ml_collections.ConfigDict) -> dict:
    """The builder keyword arguments of ``c.model.overrides`` that are set (None = default)."""
    return {k: v for k, v in c.model.overrides.to_dict().items() if v is not None}


# Builder arguments that the training config sets elsewhere or that a trained classifier cannot
# take, with what to do instead.
_NOT_OVERRIDES = {
    "survival_prob": "set model.survival_prob",
    "sd_mode": "set model.sd_mode",
    "sd_scale_at": "set model.sd_scale_at",
    "sync_bn": "set model.sync_bn (auto | on | off)",
    "resolution": "set model.image_size",
    "include_top": "training needs the classifier head (export feature extractors instead)",
    "pooling": "training needs the classifier head (export feature extractors instead)",
}


def _check_model_overrides(c: ml_collections.ConfigDict, need) -> None:
    """Every set override is a keyword the model's builder takes (a Python config may add keys
    the command line cannot), with a close match for a typo."""
    try:
        builder = models.get_builder(c.model.name)
    except ValueError as e:  # the unknown-model error, with close matches
        need(False, f"model.name: {e}")
    params = inspect.signature(builder.func).parameters  # sd_builder keeps __wrapped__
    taken = (set(params) | set(common.SD_KEYWORDS)) - {"name", "num_classes", "input_shape", "sd"}
    taken -= set(_NOT_OVERRIDES)
    for key in model_overrides(c):
        need(key not in _NOT_OVERRIDES, f"model.overrides.{key}: {_NOT_OVERRIDES.get(key)}")
        close = difflib.get_close_matches(key, sorted(taken), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        need(
            key in taken,
            f"model.overrides.{key}: {c.model.name}'s builder takes no such argument.{hint} "
            f"It takes: {', '.join(sorted(taken))}.",
        )


def parse_variant(arg: str | None, variants, family: str, usage: str) -> tuple[str, bool]:
    """``"VARIANT"`` → ``(VARIANT, False)``, ``"VARIANT,runlocal"`` → ``(VARIANT, True)``.

    The argument of configs that name a variant (``--config=efficientnet:b3,runlocal``). An
    unknown variant gets close matches, an unknown option the only valid one; ``usage`` is the
    command-line form shown in the error.
    """
    variant, *options = (arg or "").split(",")
    if variant not in variants:
        close = difflib.get_close_matches(variant, variants, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown {family} variant {variant!r}.{hint} Valid variants: "
            f"{', '.join(variants)} ({usage})."
        )
    if options not in ([], ["runlocal"]):
        raise ValueError(
            f"Unknown config argument(s) {','.join(options)!r} for {family} {variant}; "
            "the only one is 'runlocal'."
        )
    return variant, bool(options)


def _check_arg(arg: str | None) -> bool:
    if arg in (None, ""):
        return False
    if arg == "runlocal":
        return True
    raise ValueError(f"Unknown config argument {arg!r}; the only one is 'runlocal'.")


def set_model(c: ml_collections.ConfigDict, model_name: str) -> None:
    """Sets ``c.model.name`` and its native input size from the model registry.

    The size is the registry's ``ModelInfo.input_size`` (timm's ``default_cfg``), the one place
    it is written: EfficientNet-B3's 300 px lives in its row of ``tfsd.models.efficientnet``.
    """
    c.model.name = model_name
    c.model.image_size = models.get_model_info(model_name).input_size[0]


def runlocal(c: ml_collections.ConfigDict, **model_overrides) -> None:
    """Shrinks ``c`` in place to train on the offline synthetic dataset on 2 CPU cores."""
    c.data.name = "synthetic"
    c.data.num_classes = 10
    c.data.randaugment_magnitude = 0.0
    c.data.mixup_alpha = 0.0
    c.data.cutmix_alpha = 0.0
    c.model.num_classes = 0
    c.model.image_size = 32
    for key, value in model_overrides.items():
        c.model.overrides[key] = value
    c.batch_size = 64
    c.precision = "float32"
    c.lr.scale_by_batch = False
    c.ema_decay = 0.0
    c.steps_per_loop = 25
    c.checkpoint_every_steps = 200
    c.eval_steps = 0


# -------------------------------------------------------------------------------------------------
# Recipes.
# -------------------------------------------------------------------------------------------------


def cifar_resnet(dataset: str, model_name: str, arg: str | None = None):
    """The stochastic-depth paper's CIFAR recipe for ``model_name`` on ``dataset``."""
    c = base_config()
    set_model(c, model_name)  # 32 px
    c.model.survival_prob = 0.5
    c.model.sd_mode = "batch"
    c.model.sd_scale_at = "inference"
    if dataset == "cifar100":
        c.model.overrides.mean = common.CIFAR100_MEAN
        c.model.overrides.std = common.CIFAR100_STD
    c.data.name = dataset
    c.batch_size = 128
    c.num_epochs = 500.0
    c.optimizer.name = "sgd"
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 1e-4
    c.lr.base = 0.1
    c.lr.schedule = "step"
    c.lr.step_boundaries = (0.5, 0.75)
    c.steps_per_loop = 100
    c.checkpoint_every_steps = 2000
    if _check_arg(arg):
        # ResNet-20 (n = 3) of the same family: ResNet-110 needs the paper's 0.01 warm-up and
        # hundreds of epochs; ResNet-20 reaches ~99% on synthetic data in ~3 minutes on 2 cores.
        runlocal(c, width=1.0)
        c.model.name = "cifar_resnet20"
        c.data.synthetic_train_size = 8192
        c.data.synthetic_eval_size = 1024
        c.num_epochs = 3.0
        c.lr.warmup_epochs = 0.5
        c.lr.schedule = "cosine"
    return c


def svhn_resnet(model_name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The paper's SVHN recipe: 50 epochs on train+extra, lr ÷10 at epochs 30 and 35."""
    c = cifar_resnet("svhn_cropped", model_name)
    c.model.overrides.mean = common.SVHN_MEAN
    c.model.overrides.std = common.SVHN_STD
    c.data.train_split = "train+extra"
    c.num_epochs = 50.0
    c.lr.step_boundaries = (0.6, 0.7)
    c.checkpoint_every_steps = 5000
    if _check_arg(arg):
        c = cifar_resnet("svhn_cropped", model_name, arg)
    return c


def imagenet_resnet(model_name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """fb.resnet.torch's ImageNet recipe (the paper's ImageNet experiment) for ``model_name``."""
    c = base_config()
    set_model(c, model_name)  # 224 px
    c.model.survival_prob = 0.8
    c.model.sd_mode = "batch"
    c.model.sd_scale_at = "inference"
    c.data.name = "imagenet2012"
    c.batch_size = 256
    c.num_epochs = 90.0
    c.optimizer.name = "sgd"
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 1e-4
    c.lr.base = 0.1
    c.lr.scale_by_batch = True
    c.lr.schedule = "step"
    c.lr.step_boundaries = (1 / 3, 2 / 3)
    c.steps_per_loop = 500
    c.checkpoint_every_steps = 5000
    if _check_arg(arg):
        runlocal(c, width=0.125)
        c.data.synthetic_train_size = 8192
        c.data.synthetic_eval_size = 1024
        c.num_epochs = 3.0
        c.lr.schedule = "cosine"
        c.lr.base = 0.05
        c.lr.warmup_epochs = 0.25
    return c


def finetune_efficientnet(model_name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """Fine-tunes a keras.applications ImageNet ``model_name`` on a folder of your images.

    A common transfer recipe (not a published one): the pretrained backbone, a new head, 224 px
    (B0's native size), SGD with Nesterov momentum at lr 0.01 for batch 64 (~1/20 of the
    from-scratch rate) with cosine decay, the head trained alone for the first 200 steps, EMA,
    label smoothing 0.1, per-sample stochastic depth at survival 0.8 as in pre-training.
    ``runlocal``: the same model family shrunk, from random weights, on the synthetic data.
    """
    c = base_config()
    set_model(c, model_name)
    c.model.survival_prob = 0.8
    c.model.sd_mode = "sample"
    c.model.sd_scale_at = "train"
    c.data.name = "folder:"  # required: --config.data.name=folder:/path/to/images
    c.batch_size = 64
    c.num_epochs = 20.0
    c.optimizer.name = "sgd"
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 1e-5
    c.lr.base = 0.01
    c.lr.warmup_epochs = 1.0
    c.lr.schedule = "cosine"
    c.label_smoothing = 0.1
    c.ema_decay = 0.999
    c.checkpoint_every_steps = 500
    # keras.applications caches its ImageNet files here (keras.utils.get_file's default cache).
    variant = model_name.removeprefix("efficientnet_")
    c.init.source = f"~/.keras/models/efficientnet{variant}_notop.h5"
    c.init.skip = "predictions"
    c.init.freeze_steps = 200
    if _check_arg(arg):
        runlocal(c, width=0.25, depth=0.25)
        c.init.source = ""  # nothing can be downloaded here: random init
        c.init.freeze_steps = 0
        c.data.synthetic_train_size = 1024
        c.data.synthetic_eval_size = 256
        c.batch_size = 32
        c.num_epochs = 2.0
        c.lr.base = 0.05
        c.label_smoothing = 0.0
        c.ema_decay = 0.0
    return c
