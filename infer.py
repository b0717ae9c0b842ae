"""Command-line entry point: ``python infer.py COMMAND ...`` (see ``python infer.py --help``)."""
from arbitrary_nst.cli import main
from arbitrary_nst.errors import run_command

if __name__ == "__main__":
    raise SystemExit(run_command(main))  # (a Ctrl-C while JAX loads was lost without it)
