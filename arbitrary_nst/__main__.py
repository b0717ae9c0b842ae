"""``python -m arbitrary_nst COMMAND ...``: same as ``python infer.py``."""
from .cli import main
from .errors import run_command  # (a Ctrl-C while JAX loads was lost without it)

raise SystemExit(run_command(main, prog="python -m arbitrary_nst"))  # (usage said infer.py)
