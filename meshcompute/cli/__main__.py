"""``python -m meshcompute.cli``: the ``mesh`` command."""

from . import main

main()
