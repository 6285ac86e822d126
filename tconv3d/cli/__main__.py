"""``python -m tconv3d.cli``: the ``tconv3d`` command, as ``python -m tconv3d``."""
import sys

from ._main import main

if __name__ == "__main__":
    sys.exit(main())
