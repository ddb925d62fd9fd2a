"""``python -m blochnet``: the same as the ``blochnet`` command."""

from blochnet.cli.main import app

app(prog_name="blochnet")
