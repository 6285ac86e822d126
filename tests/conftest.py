import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Keras 3 runs its oracle tests on the torch backend (set before keras is imported).
os.environ.setdefault("KERAS_BACKEND", "torch")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("TCONV3D_BIGMEM", "0") not in ("", "0"):
        return
    skip = pytest.mark.skip(reason="bigmem test: set TCONV3D_BIGMEM=1 to run it")
    for item in items:
        if "bigmem" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture
def rng():
    return np.random.default_rng(20261127)


@pytest.fixture
def run_python(tmp_path):
    """``run(*args, env=None, cwd=None, program=None)``: run ``python *args`` (or
    ``program *args``) in a child process that imports the tconv3d under test.

    The folder holding that package comes first on ``PYTHONPATH`` and the child starts in
    a temporary directory (``tmp_path`` unless ``cwd`` is given): started in the
    repository root, ``python -c`` would import the uncompiled source folder ``tconv3d/``
    instead of the installed package. ``env`` entries are added to the environment
    (``None`` values remove a variable; a ``PYTHONPATH`` entry goes first).
    """
    import tconv3d
    home = str(Path(tconv3d.__file__).resolve().parent.parent)

    def run(*args, env=None, cwd=None, program=None, timeout=120):
        env = dict(env or {})
        child_env = dict(os.environ)
        child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (env.pop("PYTHONPATH", None), home, os.environ.get("PYTHONPATH")) if p)
        for name, value in env.items():
            if value is None:
                child_env.pop(name, None)
            else:
                child_env[name] = value
        command = [*(program or [sys.executable]), *map(str, args)]
        return subprocess.run(command, cwd=cwd or tmp_path, env=child_env,
                              capture_output=True, text=True, timeout=timeout, check=False)
    return run
