"""``python -m tlmat.cli``."""

from tlmat.cli import app

app()
