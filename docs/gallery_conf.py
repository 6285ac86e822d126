"""Sphinx-gallery hooks (named by string in conf.py so the configuration stays picklable).

The examples run during the build with the arguments below: their default sizes where
those are small, and files written outside the source tree.
"""
import tempfile
from pathlib import Path

_OUT = Path(tempfile.gettempdir()) / "tconv3d-docs-gallery"

# The order of the gallery: from the first call to the larger jobs.
ORDER = [
    "quickstart.py", "train_layer.py", "sklearn_pipeline.py", "mri_superresolution.py",
    "torch_dropin.py", "keras_weight_transfer.py", "dask_large_volume.py",
]


def reset_argv(gallery_conf, script_vars):
    """``sys.argv[1:]`` for each example, as sphinx-gallery runs it."""
    name = Path(script_vars["src_file"]).name
    if name == "mri_superresolution.py":
        # The figure stays open for the gallery to show; its file goes to a scratch
        # directory, not over examples/mri_superresolution.png (the README's picture).
        _OUT.mkdir(exist_ok=True)
        return ["--png", str(_OUT / "mri_superresolution.png")]
    if name == "dask_large_volume.py":
        # 48^3 -> 96^3 on the threaded scheduler, stores in a temporary directory.
        return ["--check"]
    return []


def order(filename):
    """Sort key of ``within_subsection_order``: the position in :data:`ORDER`."""
    return ORDER.index(filename) if filename in ORDER else len(ORDER)
