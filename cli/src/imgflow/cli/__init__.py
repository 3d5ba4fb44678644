"""imgflow's command-line client: the HTTP API from a terminal or a script (``imgflow --help``)."""
