"""pytest's settings for ``python -m pytest --doctest-modules tconv3d`` from the repository.

The docstring examples of the optional modules need their packages: a module whose
optional dependency cannot be imported is not collected (CI installs them all and runs
the doctests of the installed package). Keras runs on its torch backend, as in the tests.
"""
import importlib.util
import os

os.environ.setdefault("KERAS_BACKEND", "torch")   # before keras is imported

# module of tconv3d -> the packages its import needs
_OPTIONAL = {"torch.py": ("torch",), "keras.py": ("keras", "torch"),
             "_torch_autograd.py": ("torch",), "dask.py": ("dask",)}

collect_ignore = [f"tconv3d/{module}" for module, needs in _OPTIONAL.items()
                  if any(importlib.util.find_spec(name) is None for name in needs)]
