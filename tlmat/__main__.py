"""``python -m tlmat``: the command line, as ``tlmat``."""

from tlmat.cli import app

app(prog_name="tlmat")
