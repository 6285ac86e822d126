"""Sphinx configuration: ``python -m sphinx -W -b html docs docs/_build/html`` from the root.

The package is imported from the working directory's ``tconv3d/`` when it holds the
compiled core (a source tree built in place), else from the installed package (CI builds
the docs against the installed wheel). The gallery runs ``examples/`` during the build.
"""
import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
if any((ROOT / "tconv3d").glob("_kernels.*")):      # built in place: document this tree
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS))                      # gallery_conf.py (sphinx-gallery hooks)
os.environ.setdefault("KERAS_BACKEND", "torch")    # the Keras example runs on PyTorch
# The gallery runs its examples on one OpenMP thread unless told otherwise, as the tests do:
# the results do not depend on it, and on a shared 2-core machine two threads per process
# spin against the other load and make these small problems several times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import tconv3d  # noqa: E402

project = "tconv3d"
author = "The tconv3d developers"
copyright = "The tconv3d developers"
version = release = tconv3d.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "matplotlib.sphinxext.plot_directive",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "auto_examples/*.ipynb",
                    "auto_examples/*.py", "auto_examples/*.zip"]
default_role = "literal"    # `x` in the user guide is code, as ``x`` is

# -- API reference -----------------------------------------------------------------------
autosummary_generate = True
autosummary_ignore_module_all = False      # a module's public names are its __all__
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"                  # the numpydoc sections say the types

def _public_modules():
    """``[(name, module)]``: ``tconv3d`` and its public modules that import here.

    A module whose optional dependency is missing is left out (it has no page either).
    """
    import importlib
    import pkgutil

    names = ["tconv3d"] + [f"tconv3d.{m.name}" for m in pkgutil.iter_modules(tconv3d.__path__)
                           if not m.name.startswith("_")]
    modules = []
    for module_name in names:
        try:
            modules.append((module_name, importlib.import_module(module_name)))
        except ImportError:
            continue
    return modules


def _documented_elsewhere():
    """``{module: names in its __all__ whose page is another module's}``.

    Each function or class has one page: in the public module that defines it, else (a
    private module's, such as ``conv_transpose3d`` of ``tconv3d._ops``) in ``tconv3d``
    when the package exports it. ``tconv3d.Conv3DTranspose`` is therefore documented as
    ``tconv3d.layers.Conv3DTranspose``, and ``tconv3d.layers.kernel_from_torch`` as
    ``tconv3d.kernel_from_torch``. A constant's page is the module that assigns it
    (``tconv3d.io.FORMATS`` is ``tconv3d.files.FORMATS``).
    """
    import inspect

    modules = _public_modules()

    def assigns(module, name):  # a constant's home is the module whose code assigns it
        return re.search(rf"^{name}\s*[:=]", inspect.getsource(module), re.M) is not None

    skip = {}
    for module_name, module in modules:
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name, None)
            home = getattr(obj, "__module__", None)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):   # a constant
                home = next((other_name for other_name, other in modules
                             if getattr(other, name, None) is obj and assigns(other, name)),
                            module_name)
            if not isinstance(home, str) or home == module_name:
                continue
            public_home = not home.rsplit(".", 1)[-1].startswith("_")
            if public_home or (module_name != "tconv3d" and name in tconv3d.__all__):
                skip.setdefault(module_name, []).append(name)
    return skip


autosummary_context = {"documented_elsewhere": _documented_elsewhere()}
numpydoc_show_class_members = False         # the class template lists the members
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- numpydoc validation: every docstring autodoc renders, a warning (an error under -W) --
# All of numpydoc's checks (parameters documented, named and typed in order, returns
# documented, an Examples section -- which pytest --doctest-modules runs --, summaries,
# section order, ...) but two:
#   ES01  an extended summary: many methods and properties say all in their summary line;
#   SA01  a See Also section: not every function has a neighbour worth pointing to.
# What is validated is what the API pages render: the public functions and classes, their
# own and tconv3d-inherited methods and properties, ``__call__`` (the class template's only
# special member). Members inherited from torch, Keras or scikit-learn are not rendered
# (_skip_foreign_members), nor validated; numpydoc does not validate module docstrings.
# Excluded below: the modules' constants only.
numpydoc_validation_checks = {"all", "ES01", "SA01"}


def _module_data():
    """Regular expressions matching the public modules' constants (``FORMATS``, ...).

    numpydoc would validate a constant as its value (part of the checks read
    ``dict.__doc__``, ``float.__doc__``, ...), and an Examples section in its ``#:`` comment
    would never run as a doctest: a constant is described by that comment, not validated.
    """
    import inspect

    return {rf"^{re.escape(f'{module_name}.{name}')}$"
            for module_name, module in _public_modules()
            for name in getattr(module, "__all__", ())
            if not (inspect.isclass(obj := getattr(module, name, None))
                    or inspect.ismodule(obj) or callable(obj))}


numpydoc_validation_exclude = _module_data()
# GL08 (no docstring) is waived for a method that inherits its base's docstring (autodoc
# renders that one, autodoc_inherit_docstrings): Constant.__call__ is Initializer.__call__'s
# contract. numpydoc does not validate the inherited text against the override, so
# _check_inherited_docstrings (below) requires the override's parameters to be the base's.
numpydoc_validation_overrides = {"GL08": [r"\S"]}

# -- The command line's --help, as the installed command prints it ----------------------
def _write_cli_help(directory):
    """``tconv3d --help`` and each command's, into ``directory``/<command>.txt (80 columns)."""
    import argparse
    import contextlib
    import io

    from tconv3d import bench
    from tconv3d.cli._main import build_parser

    os.environ["COLUMNS"] = "80"        # argparse wraps to the terminal's width
    directory.mkdir(parents=True, exist_ok=True)
    parser = build_parser()
    texts = {"tconv3d": parser.format_help()}
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, subparser in commands.choices.items():
        if name == "bench":             # parsed by tconv3d.bench.main, with its own --help
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
                bench.main(["--help"], prog="tconv3d bench")
            texts[name] = out.getvalue()
        else:
            texts[name] = subparser.format_help()
    for name, text in texts.items():
        (directory / f"{name}.txt").write_text(text, encoding="utf-8")


_write_cli_help(DOCS / "gen_modules" / "cli")

# -- The benchmark tables, from the committed benchmarks/results.json -------------------
def _write_benchmark_tables(results_json, target):
    """reST tables of ``python benchmarks/bench_conv.py``'s results, one per dtype/threads."""
    import json

    if not results_json.is_file():
        target.write_text("(``benchmarks/results.json`` is not in this source tree.)\n")
        return
    data = json.loads(results_json.read_text(encoding="utf-8"))
    groups = {}
    for row in data["results"]:
        groups.setdefault((row["dtype"], row["threads"]), []).append(row)
    lines = []
    for (dtype, threads), rows in groups.items():
        lines += [f".. list-table:: {dtype}, {threads} thread{'s' * (threads > 1)} (ms, "
                  f"median of {data.get('repeat', 11)}; ratio = tconv3d / fastest PyTorch "
                  "layout, below 1 = tconv3d "
                  "faster)", "   :header-rows: 1", "",
                  "   * - case", "     - N, Cin→Cout, input, kernel, stride, padding",
                  "     - tconv3d fwd / fwd+bwd", "     - torch NCDHW fwd / fwd+bwd",
                  "     - torch channels_last_3d fwd / fwd+bwd", "     - tconv3d GFLOP/s",
                  "     - ratio fwd / fwd+bwd", "     - fwd vs torch NCDHW"]
        for r in rows:
            lines += [f"   * - {r['case']}", f"     - {r['shape']}",
                      f"     - {r['tconv3d_fwd_ms']:.1f} / {r['tconv3d_fwdbwd_ms']:.1f}",
                      f"     - {r['torch_ncdhw_fwd_ms']:.1f} / {r['torch_ncdhw_fwdbwd_ms']:.1f}",
                      f"     - {r['torch_cl3d_fwd_ms']:.1f} / {r['torch_cl3d_fwdbwd_ms']:.1f}",
                      f"     - {r['tconv3d_fwd_gflops']:.0f}",
                      f"     - {r['ratio_fwd']:.2f} / {r['ratio_fwdbwd']:.2f}",
                      f"     - {r['ratio_fwd_vs_torch_ncdhw']:.2f}"]
        lines.append("")
    for threads, rates in data.get("compute_rates_gflops", {}).items():
        sgemm = data["sgemm_gflops"][threads]
        lines += [f".. list-table:: float32 rates, {threads} thread{'s' * (int(threads) > 1)} "
                  "(GFLOP/s of each pass in its own call; ratio to the run's OpenBLAS sgemm "
                  f"rate, {sgemm:.0f})", "   :header-rows: 1", "",
                  "   * - case", "     - fwd", "     - grad_input", "     - grad_kernel",
                  "     - x sgemm fwd / grad_input / grad_kernel"]
        for case, r in rates.items():
            lines += [f"   * - {case}"] + [f"     - {r[key]:.0f}"
                                            for key in ("fwd", "input", "kernel")]
            lines.append("     - " + " / ".join(f"{r[key] / sgemm:.2f}"
                                                for key in ("fwd", "input", "kernel")))
        lines.append("")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines), encoding="utf-8")


_write_benchmark_tables(ROOT / "benchmarks" / "results.json",
                        DOCS / "gen_modules" / "bench_tables.rst.inc")

# -- Gallery -----------------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"\.py$",           # run every example
    "reset_argv": "gallery_conf.reset_argv",   # small sizes, pictures outside the tree
    "doc_module": ("tconv3d",),
    "backreferences_dir": "gen_modules/backreferences",
    "remove_config_comments": True,
    "download_all_examples": False,
    "plot_gallery": "True",
    "matplotlib_animations": False,
    "within_subsection_order": "gallery_conf.order",
}

# -- Figures drawn by the user guide's plot directives ------------------------------------
plot_include_source = False
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 110)]
plot_rcparams = {"figure.autolayout": True, "font.size": 9}

# -- HTML -------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"tconv3d {version}"
html_theme_options = {
    "github_url": "https://github.com/tconv3d/tconv3d",
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_static_path = []
html_show_sourcelink = False


# -- Members documented ------------------------------------------------------------------
def _skip_foreign_members(app, what, name, obj, skip, options):
    """Document a class's own and tconv3d-inherited members, not torch's or sklearn's.

    The class template asks for inherited members (the layer's ``get_weights`` comes from
    ``tconv3d._layer_weights``); ``nn.Module``'s or ``BaseEstimator``'s methods are theirs.
    """
    if what != "class":
        return None
    target = obj.fget if isinstance(obj, property) else getattr(obj, "__func__", obj)
    if not (callable(target) or isinstance(obj, property)):
        return None
    module = getattr(target, "__module__", None) or ""
    return True if not module.startswith("tconv3d") else None


def _check_inherited_docstrings(app, what, name, obj, options, lines):
    """Warn when a method without a docstring takes other parameters than the base method
    whose docstring autodoc shows for it (numpydoc's GL08 is waived for such a method)."""
    import inspect

    from sphinx.util import logging

    function = getattr(obj, "__func__", obj)
    if what != "method" or not inspect.isfunction(function) or function.__doc__ is not None:
        return
    cls_name, _, method = function.__qualname__.rpartition(".")
    cls = getattr(inspect.getmodule(function), cls_name, None)
    for base in (cls.__mro__[1:] if inspect.isclass(cls) else ()):
        inherited = getattr(base.__dict__.get(method), "__func__", base.__dict__.get(method))
        if inspect.isfunction(inherited) and inherited.__doc__:
            if inspect.signature(function) != inspect.signature(inherited):
                logging.getLogger(__name__).warning(
                    f"{name} shows the docstring of {base.__qualname__}.{method}, which "
                    f"takes other parameters: {inspect.signature(function)} vs "
                    f"{inspect.signature(inherited)}")
            return


def setup(app):
    app.connect("autodoc-skip-member", _skip_foreign_members)
    app.connect("autodoc-process-docstring", _check_inherited_docstrings)
