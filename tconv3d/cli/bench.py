"""``tconv3d bench ...``: the benchmark suite of :mod:`tconv3d.bench`, with its own parser
and ``--help``."""
from ._common import EXIT_OK, PROG


def add_parser(commands):
    """List the ``bench`` command in the ``tconv3d --help`` of the subparsers ``commands``;
    its arguments are parsed by :func:`tconv3d.bench.main` (see :func:`cmd_bench`)."""
    commands.add_parser(
        "bench", add_help=False, help="benchmark suite against PyTorch/TensorFlow "
                                      "(`tconv3d bench --help`: its options)")


def cmd_bench(argv):
    from .. import bench
    bench.main(argv, prog=f"{PROG} bench")
    return EXIT_OK
