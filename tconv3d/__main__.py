"""``python -m tconv3d``: the ``tconv3d`` command (see :mod:`tconv3d.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
