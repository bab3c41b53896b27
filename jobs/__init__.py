"""Entry points, one module per job: `python -m jobs.<name> --help`."""
