"""``python -m feint``: the same as the ``feint`` command."""

from feint.cli import main

main()
