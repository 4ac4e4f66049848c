"""Prepares a TFDS dataset offline from a folder of its source files: ``python -m tfsd.prepare``.

``--dataset=NAME --source_dir=FOLDER [--data_dir=DIR] [--accept_checksums]`` runs TFDS's own
builder on the files in ``FOLDER`` (TFDS's file names) and writes TFDS's on-disk dataset to
``DIR`` (default: TFDS's ``~/tensorflow_datasets``); nothing is downloaded. A file whose size or
sha256 differs from TFDS's registered one is an error unless ``--accept_checksums``; accepted
files get their decoded content validated and their checksums recorded next to the data.
Prints the record (JSON) as the last line. The library is `tfsd.data.prepare`; see
``docs/data.md``. Example (Debian's ``apt-get install dataset-fashion-mnist``)::

  tfsd-prepare --dataset=fashion_mnist --source_dir=/usr/share/datasets/fashion-mnist \\
      --accept_checksums
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import tensorflow_datasets as tfds
from absl import app, flags

from tfsd import cli
from tfsd.data import prepare


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("dataset", None, "TFDS name, e.g. fashion_mnist.", flag_values=fv)
    flags.DEFINE_string(
        "source_dir", None, "Folder holding the dataset's source files.", flag_values=fv
    )
    flags.DEFINE_bool(
        "accept_checksums",
        False,
        "Accept source files whose size/sha256 differ from TFDS's registered ones (their "
        "content is then validated and their checksums recorded next to the data).",
        flag_values=fv,
    )


COMMAND = cli.Command("tfsd.prepare", _define_flags)


def main(argv: list[str]) -> None:
    del argv
    v = COMMAND.values()
    if not v["dataset"] or not v["source_dir"]:
        raise app.UsageError("Pass --dataset=NAME and --source_dir=FOLDER.")
    if v["model_dir"]:
        raise app.UsageError("tfsd.prepare takes no --model_dir (it writes to --data_dir).")
    tfds.disable_progress_bar()
    try:
        record = prepare.prepare(
            v["dataset"],
            v["source_dir"],
            data_dir=v["data_dir"],
            accept_checksums=v["accept_checksums"],
        )
    except (FileNotFoundError, ValueError, tfds.core.registered.DatasetNotFoundError) as e:
        COMMAND.fail(e)
    print(json.dumps(record))


def run_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m tfsd.prepare`` and the ``tfsd-prepare`` console script."""
    COMMAND.run(main, argv)


if __name__ == "__main__":
    run_main()
