"""``python -m surgery.cli``: the console script, for environments without it on PATH."""

from . import main

main()
