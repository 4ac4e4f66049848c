"""Export for TF Serving: ``python -m tfsd.export --model_dir=RUN --export_dir=BASE``.

Writes ``BASE/<version>/``, a folded, verified SavedModel with three signatures and a warm-up
file, published atomically under the next free version, and ``BASE/models.config``. The command
only parses flags; the library is `tfsd.serving.saved_model`. See ``docs/serving.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from absl import app, flags

from tfsd import cli
from tfsd.serving import class_names, image_limits, saved_model
from tfsd.serving.publish import ExportError
from tfsd.training import run_dir


def _define_flags(fv: flags.FlagValues) -> None:
    f = dict(flag_values=fv)
    flags.DEFINE_string("keras_model", None, "A .keras model file to export instead.", **f)
    flags.DEFINE_string("export_dir", None, "Base path: versions go in BASE/<N>/.", **f)
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix; default: the latest.", **f)
    flags.DEFINE_integer("version", None, "Version number; default: the next free one.", **f)
    flags.DEFINE_enum("weights", None, ["ema", "raw"], "Default: EMA if the run has it.", **f)
    flags.DEFINE_bool("fold", True, "Fold stochastic depth into the weights.", **f)
    flags.DEFINE_string("model_name", None, "Name in TF Serving; default: BASE's name.", **f)
    flags.DEFINE_string(
        "container_base_path", None, "BASE as the server sees it; default /models/<name>.", **f
    )
    flags.DEFINE_enum(
        "preprocess", None, ["inception", "cifar", "none"],
        "--keras_model only, required: what serving_bytes does to a decoded image (inception: "
        "ImageNet-style central crop; cifar/none: resize the whole image). A run uses its own.",
        **f,
    )  # fmt: skip
    flags.DEFINE_integer(
        "max_image_pixels", image_limits.DEFAULT_MAX_PIXELS,
        "Largest width x height serving_bytes/serving_examples decode; larger is refused.", **f,
    )  # fmt: skip
    flags.DEFINE_integer(
        "max_image_bytes", image_limits.DEFAULT_MAX_BYTES,
        "Largest encoded image (bytes) serving_bytes/serving_examples accept.", **f,
    )  # fmt: skip
    flags.DEFINE_string(
        "class_names", None,
        "--keras_model only: a text file with one class name per line, or 'imagenet'.", **f,
    )  # fmt: skip


COMMAND = cli.Command("tfsd.export", _define_flags)


def main(argv: list[str]) -> None:
    del argv
    v = COMMAND.values()
    if not v["export_dir"]:
        raise app.UsageError("--export_dir is required.")
    if bool(v["model_dir"]) == bool(v["keras_model"]):
        raise app.UsageError("Give exactly one of --model_dir and --keras_model.")
    if v["keras_model"] and not v["preprocess"]:
        raise app.UsageError(
            "--keras_model needs --preprocess: inception (ImageNet-style central crop), cifar or "
            "none (resize the whole image, e.g. 32x32 CIFAR models); tfsd cannot tell from a "
            ".keras file which preprocessing the model was trained with."
        )
    if v["model_dir"] and v["preprocess"]:
        raise app.UsageError("--preprocess is for --keras_model; a run uses its own.")
    common = dict(
        version=v["version"],
        fold=v["fold"],
        model_name=v["model_name"],
        container_base_path=v["container_base_path"],
        image_limits=image_limits.ImageLimits(v["max_image_pixels"], v["max_image_bytes"]),
    )
    try:
        if v["model_dir"]:
            path = saved_model.export_run(
                v["model_dir"],
                v["export_dir"],
                checkpoint=v["checkpoint"],
                weights=v["weights"],
                data_dir=v["data_dir"],
                **common,
            )
        else:
            names = class_names.read_class_names(v["class_names"]) if v["class_names"] else None
            path = saved_model.export_keras_file(
                v["keras_model"],
                v["export_dir"],
                preprocess=v["preprocess"],
                class_names=names,
                **common,
            )
    except (ExportError, run_dir.RunDirError, ValueError, FileNotFoundError) as e:
        COMMAND.fail(e)
    # The base as an absolute path: what EXPORT_BASE of export/docker-compose.yml needs (docker
    # compose resolves a relative bind-mount source against export/, not the caller's directory).
    base = os.path.abspath(v["export_dir"]) if "://" not in v["export_dir"] else v["export_dir"]
    print(json.dumps({"exported": path, "export_base": base}))


def run_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m tfsd.export`` and the ``tfsd-export`` console script."""
    COMMAND.run(main, argv)


if __name__ == "__main__":
    run_main()
