"""``python -m analysis.cli`` (and ``torchrun -m analysis.cli``): the ``vsink`` command."""

from analysis.cli.root import main

main()
