"""The source registry: which module a data config's ``name`` selects. Add a source here.

A source module provides ``resolve(config, data_dir) -> Plan``: it validates the config against
the data (class count, splits) and says how to preprocess it. The pipeline (`tfsd.data.pipeline`)
then reads examples by ``Plan.kind``: index sources (synthetic, folder) shuffle indices and load
each example after the shuffle; TFDS streams encoded records (`tfsd.data.tfds.examples`).
"""

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import ml_collections

from tfsd.data import folder, synthetic, tfds
from tfsd.data.config import DatasetInfo, Plan, merged_config, validate


class Source(NamedTuple):
    """One data source: a rule on the config's ``name`` and the function that resolves it."""

    kind: str  # Plan.kind of what it resolves
    matches: Callable[[str], bool]
    resolve: Callable[[ml_collections.ConfigDict, str | None], Plan]


# The first source whose rule matches the name wins.
SOURCES = (
    Source("synthetic", lambda name: name == synthetic.NAME, synthetic.resolve),
    Source("folder", lambda name: name.startswith(folder.PREFIX), folder.resolve),
    # TFDS names may carry a builder config: "imagenette/320px-v2".
    Source("tfds", lambda name: name.split("/")[0] in tfds.SPECS, tfds.resolve),
)


def resolve(c: ml_collections.ConfigDict, data_dir: str | None) -> Plan:
    """Resolves a merged config (see `tfsd.data.config.merged_config`) against its source."""
    validate(c)
    for source in SOURCES:
        if source.matches(c.name):
            return source.resolve(c, data_dir)
    raise ValueError(
        f"Unknown dataset name {c.name!r}: use 'synthetic', one of the TFDS datasets "
        f"{sorted(tfds.SPECS)}, or '{folder.PREFIX}/abs/path'."
    )


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
