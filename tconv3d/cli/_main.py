"""The ``tconv3d`` argument parser, the dispatch to a command, and errors as exit codes."""
import argparse
import contextlib
import os
import signal
import sys
import threading
import warnings

from .._version import __version__
from ..files import FileError, describe_error
from . import bench, demo, fit, show, upsample
from ._common import (EXIT_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE, PROG,
                      CommandError, HelpFormatter)

COMMANDS = (upsample, show, fit, demo, bench)  # in the order of `tconv3d --help`


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C, so that temporary files are removed."""


@contextlib.contextmanager
def _sigterm_unwinds():
    """Within the block, SIGTERM raises :class:`Terminated` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated()
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line: ``tconv3d upsample: error: ... (see --help)``."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser():
    """The ``tconv3d`` argument parser; each command module adds its subcommand."""
    parser = _Parser(
        prog=PROG, formatter_class=HelpFormatter,
        description="Fast CPU 3-D upsampling of volumes on disk (.npy, .npz, .nii, .nii.gz) "
                    "with tconv3d's compiled transposed convolution.",
        epilog="examples:\n"
               "  tconv3d demo                                   # real MRI, PSNR, picture\n"
               "  tconv3d upsample t1.nii.gz t1_x2.nii.gz --factor 2\n"
               "  tconv3d upsample vol.npy vol_x3.npy --factor 3 --kernel nearest\n"
               "  tconv3d fit hires/*.nii.gz --out k.npz && "
               "tconv3d upsample lo.nii lo_x2.nii --kernel k.npz\n"
               "  tconv3d show t1_x2.nii.gz --out slices.png\n"
               "  tconv3d bench --cases unet_up --threads 2\n\n"
               "exit status: 0 success, 1 error (one line on stderr), 2 bad command line, "
               "130 interrupted, 143 terminated.\n\nTCONV3D_DEBUG=1 shows the traceback of an "
               "unexpected error.")
    parser.add_argument("--version", action="version", version=f"tconv3d {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND",
                                     parser_class=_Parser)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    text = " ".join(str(message).split())
    print(f"{PROG}: warning: {text}", file=sys.stderr if file is None else file)


def main(argv=None):
    """Run the ``tconv3d`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 success, 1 error (reported on one line of stderr), 2 bad
        command line, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "bench":  # bench has its own parser and --help
        run, target = bench.cmd_bench, argv[1:]
        where = f"{PROG} bench"
    else:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.error("choose a command: upsample, show, fit, demo or bench")
        run, target, where = args.run, args, f"{PROG} {args.command}"
    with warnings.catch_warnings(), _sigterm_unwinds():
        warnings.showwarning = _one_line_warning
        try:
            return run(target)
        except (CommandError, FileError) as exc:
            print(f"{where}: error: {exc}", file=sys.stderr)
        except KeyboardInterrupt:
            print(f"{where}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Terminated:
            print(f"{where}: terminated", file=sys.stderr)
            return EXIT_TERMINATED
        except MemoryError as exc:
            print(f"{where}: error: not enough memory: {exc}", file=sys.stderr)
        except OSError as exc:  # writing: disk full, permissions changed meanwhile, ...
            print(f"{where}: error: {_os_error(exc)}", file=sys.stderr)
        except Exception as exc:
            if os.environ.get("TCONV3D_DEBUG", "") not in ("", "0"):
                raise
            print(f"{where}: error: {describe_error(exc)} (unexpected; TCONV3D_DEBUG=1 "
                  "shows the traceback)", file=sys.stderr)
    return EXIT_ERROR


def _os_error(exc):
    if exc.filename:
        return f"{exc.strerror or exc}: {exc.filename!r}"
    return str(exc)
