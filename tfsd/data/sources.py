"""The source registry: which module a data config's ``name`` selects. Add a source here.

A source is a module with (see `tfsd.data.synthetic`, `tfsd.data.folder`, `tfsd.data.tfds`):

* ``resolve(config, data_dir) -> Plan``: validates the config against the data (class count,
  splits) and says how to preprocess it, without reading an image;
* ``elements(plan, config, *, split, train, seed, start, num_pipelines, pipeline_id,
  input_context)``: the cheap, shuffled and sharded stream ``(position, *payload)`` of this
  pipeline from global position ``start`` on (indices, file paths or encoded bytes);
* ``load(plan, split, image_size, *payload) -> (image, label)``: the per-example read, after
  the shuffle; the image is encoded bytes if ``ENCODED`` else a decoded image.

`tfsd.data.pipeline.build_dataset` drives every source through these three alone.
"""

from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, NamedTuple

import ml_collections

from tfsd.data import folder, synthetic
from tfsd.data import tfds as tfds_source  # the TFDS source module, not tensorflow_datasets
from tfsd.data.config import DatasetInfo, Plan, merged_config, validate


class Source(NamedTuple):
    """One data source: a rule on the config's ``name`` and the module that implements it."""

    kind: str  # Plan.kind of what it resolves
    matches: Callable[[str], bool]
    module: ModuleType


# The first source whose rule matches the name wins.
SOURCES = (
    Source("synthetic", lambda name: name == synthetic.NAME, synthetic),
    Source("folder", lambda name: name.startswith(folder.PREFIX), folder),
    # TFDS names may carry a builder config: "imagenette/320px-v2".
    Source("tfds", lambda name: name.split("/")[0] in tfds_source.SPECS, tfds_source),
)


def resolve(c: ml_collections.ConfigDict, data_dir: str | None) -> Plan:
    """Resolves a merged config (see `tfsd.data.config.merged_config`) against its source."""
    validate(c)
    for source in SOURCES:
        if source.matches(c.name):
            return source.module.resolve(c, data_dir)
    raise ValueError(
        f"Unknown dataset name {c.name!r}: use 'synthetic', one of the TFDS datasets "
        f"{sorted(tfds_source.SPECS)}, or '{folder.PREFIX}/abs/path'."
    )


def module_of(plan: Plan) -> ModuleType:
    """The source module that resolved ``plan`` (its ``elements``, ``load`` and ``ENCODED``)."""
    for source in SOURCES:
        if source.kind == plan.kind:
            return source.module
    raise ValueError(f"No source of kind {plan.kind!r}; known: {[s.kind for s in SOURCES]}.")


def get_dataset_info(config: Mapping[str, Any], *, data_dir: str | None = None) -> DatasetInfo:
    """Validates ``config`` and describes its dataset without reading any image.

    Args:
        config: the data config (``default_config()`` with overrides).
        data_dir: TFDS data directory (local or ``gs://``); None = TFDS's default
            (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). Unused by other sources.

    Returns:
        The dataset's ``DatasetInfo``.

    Raises:
        ValueError: the config is invalid or does not match the dataset.
        DatasetNotPreparedError: a TFDS dataset is not in ``data_dir`` (says how to prepare it).
        FileNotFoundError: a folder dataset's path does not exist.
    """
    return resolve(merged_config(config), data_dir).info
