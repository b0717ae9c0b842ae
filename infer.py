"""Command-line entry point: ``python infer.py COMMAND ...`` (see ``python infer.py --help``)."""
from arbitrary_nst.cli import main
from arbitrary_nst.errors import interrupts_outside_gc_callbacks

if __name__ == "__main__":
    with interrupts_outside_gc_callbacks():  # (a Ctrl-C while JAX loads was lost)
        status = main()
    raise SystemExit(status)
