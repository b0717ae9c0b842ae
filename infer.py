"""Command-line entry point: ``python infer.py COMMAND ...`` (see ``python infer.py --help``)."""
from arbitrary_nst.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
