"""``--config=NAME[:ARG]`` → a config file: name resolution, loading and listing.

Configs are ``configs/NAME.py`` files (``get_config(arg)`` returning an ``ml_collections``
``ConfigDict``, as in big_vision), shipped in the wheel as ``tfsd.configs``; a family file
(``configs/efficientnet.py``) serves every ``FAMILY_VARIANT`` name. See ``docs/training.md``.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from pathlib import Path
from typing import Any

import ml_collections


def _config_dir() -> Path:
    """Where ``--config=NAME`` looks: the installed ``tfsd.configs`` package, else the source tree.

    setup.py ships the top-level ``configs/`` as the package ``tfsd.configs`` (``package_dir``),
    so after ``pip install`` of a wheel they sit next to this module. In a source checkout (on
    ``PYTHONPATH`` or installed editable, where this file stays in the checkout) they sit beside
    the ``tfsd/`` directory. Any other layout: ask the import system.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "__init__.py").is_file():
            return candidate
    spec = importlib.util.find_spec("tfsd.configs")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]).resolve()
    raise ImportError("tfsd's configs are missing: neither tfsd/configs nor a source configs/.")


CONFIG_DIR = _config_dir()


def _config_module(path: Path) -> Any:
    """Executes the config file at ``path`` as a fresh module, registered nowhere.

    Not absl's loader (``config_flags._LoadConfigModule``): it reuses one module object named
    "config" for every file (``SourceFileLoader.load_module``), so a module attribute such as
    ``VARIANTS`` of one file would still be there after loading the next.
    """
    spec = importlib.util.spec_from_file_location(f"tfsd_config_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"Cannot load config file {path}.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def family_variants(family: str) -> tuple[str, ...]:
    """The ``VARIANTS`` of the family config ``configs/FAMILY.py``; () if it is not a family.

    A family file (``configs/efficientnet.py``) serves every name ``FAMILY_VARIANT``
    (``efficientnet_b3``) through its argument (``efficientnet:b3``): see `resolve_config_path`.
    """
    path = CONFIG_DIR / f"{family}.py"
    if not family or "/" in family or not path.is_file():
        return ()
    return tuple(getattr(_config_module(path), "VARIANTS", ()))


def available_configs() -> list[str]:
    """Every ``--config=NAME`` that resolves: config files, and ``FAMILY_VARIANT`` of families.

    A family file's own name is not listed: it needs its variant as the argument.
    """
    names = []
    for path in CONFIG_DIR.glob("*.py"):
        if path.stem.startswith("_"):
            continue
        variants = family_variants(path.stem)
        names += [f"{path.stem}_{v}" for v in variants] if variants else [path.stem]
    return sorted(names)


def resolve_config_path(spec: str) -> str:
    """Maps ``NAME[:ARG]`` or ``PATH[:ARG]`` to ``PATH[:ARG]``; unknown names list close matches.

    ``NAME`` is a file ``configs/NAME.py`` or a family variant ``FAMILY_VARIANT``, which maps to
    ``configs/FAMILY.py:VARIANT[,ARG]`` (``efficientnet_b3:runlocal`` →
    ``configs/efficientnet.py:b3,runlocal``).
    """
    name, sep, arg = spec.partition(":")
    if os.path.isfile(name):
        return spec
    stem = name.removesuffix(".py")
    candidate = CONFIG_DIR / f"{stem}.py"
    if "/" not in name and candidate.is_file():
        return f"{candidate}{sep}{arg}"
    family, _, variant = stem.rpartition("_")
    variants = family_variants(family) if "/" not in name else ()
    if variant in variants:
        return f"{CONFIG_DIR / family}.py:{variant}" + (f",{arg}" if arg else "")
    if variants:
        raise ValueError(
            f"Config {name!r}: {family} has no variant {variant!r}. Valid: "
            f"{', '.join(f'{family}_{v}' for v in variants)}."
        )
    close = difflib.get_close_matches(Path(name).stem, available_configs(), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"Config {name!r} is neither a file nor a config in {CONFIG_DIR}.{hint} "
        f"Available: {', '.join(available_configs())}."
    )


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads ``NAME[:ARG]`` (no command-line overrides), for tests and notebooks."""
    path, _, arg = resolve_config_path(spec).partition(":")
    module = _config_module(Path(path))
    return module.get_config(arg) if arg else module.get_config()


def rewrite_config_argv(argv: list[str]) -> list[str]:
    """Resolves ``--config=NAME`` to the file path before absl parses flags."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config.init.from="):
            # ml_collections parses override paths as Python ("from" is a keyword): the field
            # is init.source, and --config.init.from is its spelling on the command line.
            arg = "--config.init.source=" + arg.split("=", 1)[1]
        elif arg.startswith("--config="):
            arg = "--config=" + resolve_config_path(arg.split("=", 1)[1])
        elif arg == "--config" and i + 1 < len(argv):
            out.append(arg)
            i += 1
            arg = resolve_config_path(argv[i])
        out.append(arg)
        i += 1
    return out
