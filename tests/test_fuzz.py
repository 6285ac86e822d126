"""A short run of the API fuzz harness, ``tests/fuzz/fuzz_api.py`` (its docstring says how to
run it for longer)."""
from fuzz.fuzz_api import OUTCOMES, fuzz_api


def test_fuzz_api_short():
    OUTCOMES.clear()
    fuzz_api()  # raises on a crash-like exception, a wrong result or a modified input
    # The run reached both sides of every entry point: refusals and checked results.
    for function in ("forward", "backward", "output_shape"):
        assert OUTCOMES[f"{function}: ok"] > 0, dict(OUTCOMES)
        assert OUTCOMES[f"{function}: ValueError"] > 0, dict(OUTCOMES)
    assert OUTCOMES["forward: TypeError"] > 0 and OUTCOMES["backward: TypeError"] > 0, \
        dict(OUTCOMES)
