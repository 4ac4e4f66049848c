"""Build macros shared by the script folders (benchmarks/, export/)."""

def py_scripts(name, deps):
    """A py_library of every .py file in the package, and one py_binary per script.

    `bazel run //<package>:<script name>` runs a script; `name` is the library's name.

    Args:
      name: name of the py_library holding all the package's sources.
      deps: what the scripts import (e.g. "//tfsd", "//configs").
    """
    native.py_library(
        name = name,
        srcs = native.glob(["*.py"]),
        imports = [".."],
        srcs_version = "PY3",
        deps = deps,
    )
    for src in native.glob(["*.py"], exclude = ["__init__.py"]):
        native.py_binary(
            name = src[:-len(".py")],
            srcs = [src],
            legacy_create_init = False,
            main = src,
            python_version = "PY3",
            srcs_version = "PY3",
            deps = [":" + name],
        )
