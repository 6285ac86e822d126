import os

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


@pytest.fixture
def rng():
    return np.random.default_rng(20261127)
