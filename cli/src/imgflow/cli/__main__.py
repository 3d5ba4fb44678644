"""``python -m imgflow.cli``: the same as the ``imgflow`` command."""

from imgflow.cli.main import run

run()
