"""Every script in ``examples/`` runs to the end, as a user would run it.

Each example runs in a subprocess (the repository on ``PYTHONPATH``, a temporary working
directory for the pictures it writes) with a timeout; the test checks the exit status
and a key line of its output. Examples whose optional dependency is missing are skipped,
except ``keras_weight_transfer.py``, which must then say so and exit 0.

``tconv3d`` is imported from where the tests import it: the source tree, or in CI the
installed wheel (the examples then come from the repository next to ``tests/``).

The subprocesses run with ``OMP_NUM_THREADS=1``: results do not depend on the thread
count, and on a shared CI machine two OpenMP threads per process spin against each
other's load and can take ten times longer on these small problems.
"""
import importlib.util
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _number(pattern):
    """A check that ``pattern`` matches the output and its group 1 is a small number."""
    def check(output):
        match = re.search(pattern, output)
        assert match, f"no line matching {pattern!r} in:\n{output}"
        return float(match.group(1))
    return check


def _readme_psnrs_are_printed(output):
    """The README's MRI table shows the PSNRs (anatomical, EPI) the example prints."""
    readme = ROOT / "README.md"
    if not readme.is_file():    # tests shipped without the repository around them
        return True
    method = r"(nearest|trilinear|learned|zoom order [13]|torch interpolate|nibabel order 3)"
    printed = {m[0]: m[1:] for m in re.findall(
        rf"^{method}\s+([\d.]+)\s+[\d.]+\s+([\d.]+)", output, re.M)}
    table = re.sub(r"[`*]|scipy\.ndimage\.", "", readme.read_text())
    shown = {m[0]: m[1:] for m in re.findall(
        rf"^\| {method} \| ([\d.]+) \| [\d.]+ \| ([\d.]+) \|", table, re.M)}
    # every row printed is shown (torch's only where it is installed); the learned
    # kernel's fit runs through BLAS and numpy reductions whose rounding follows the CPU,
    # so its last printed digit may differ by one from the machine the README was run on
    assert len(printed) >= 6 and set(printed) <= set(shown), (shown, printed)
    for name, values in printed.items():
        last_digit = 1 if name == "learned" else 0
        assert all(abs(round(100 * (float(a) - float(b)))) <= last_digit
                   for a, b in zip(values, shown[name])), (name, shown[name], values)
    return True


# name: (optional modules needed, extra arguments, timeout in s, check(output))
EXPECTED = {
    "quickstart.py": ((), [], 60, lambda out: (
        _number(r"layer with the function's kernel and bias: largest difference (\S+)")(out)
        < 1e-4 and "function: conv_transpose3d (2, 16, 16, 16, 8) -> (2, 32, 32, 32, 4)"
        in out)),
    "train_layer.py": ((), [], 120, lambda out: (
        _number(r"largest kernel error (\S+)")(out) < 1e-2 and "step  200" in out)),
    "torch_dropin.py": (("torch",), [], 120, lambda out: (
        _number(r"largest difference from PyTorch: (\S+)")(out) < 1e-4
        and "one training step, loss" in out)),
    "sklearn_pipeline.py": ((), [], 120, lambda out: (
        "best parameters: {'up__factor': " in out
        and _number(r"held-out accuracy: (\S+)")(out) >= 0.8)),
    "keras_weight_transfer.py": ((), [], 180, lambda out: (
        "keras is not installed" in out
        or (_number(r"largest difference from Keras: (\S+)")(out) < 1e-4
            and _number(r"back into Keras: largest difference (\S+)")(out) < 1e-4))),
    "mri_superresolution.py": (("nibabel", "scipy"), ["--png", "mri.png"], 300, lambda out: (
        "figure: mri.png" in out or "matplotlib is not installed" in out)
        and _number(r"learned - trilinear on held-out anatomical: (\S+) dB")(out) > 0
        and _readme_psnrs_are_printed(out)),
    "dask_large_volume.py": (("dask",), ["--check", "--dir", "stores"], 180, lambda out: (
        "equal to the in-memory transform: True" in out)),
}


@pytest.fixture
def run_example(run_python):
    """Run ``examples/name`` in a child process that imports the tconv3d under test."""
    def run(name, *args, timeout, pythonpath=()):
        env = {"OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}   # KERAS_BACKEND: conftest
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(map(str, pythonpath))
        return run_python(EXAMPLES / name, *args, env=env, timeout=timeout)
    return run


def test_every_example_is_tested():
    if not EXAMPLES.is_dir():
        pytest.skip("examples/ not shipped with this installation")
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_example_runs(run_example, name):
    if not (EXAMPLES / name).is_file():
        pytest.skip("examples/ not shipped with this installation")
    needs, args, timeout, check = EXPECTED[name]
    for module in needs:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{name} needs {module}")
    done = run_example(name, *args, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert check(done.stdout), done.stdout


def test_keras_example_without_keras(run_example, tmp_path):
    """Where ``import keras`` fails, the example explains and exits 0."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "keras.py").write_text("raise ImportError('No module named keras')\n")
    done = run_example("keras_weight_transfer.py", timeout=60, pythonpath=[fake])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("keras is not installed")
    assert done.stderr == ""
