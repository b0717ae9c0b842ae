"""``python -m arbitrary_nst COMMAND ...``: same as ``python infer.py``."""
from .cli import main
from .errors import interrupts_outside_gc_callbacks

with interrupts_outside_gc_callbacks():  # (a Ctrl-C while JAX loads was lost)
    status = main(prog="python -m arbitrary_nst")
raise SystemExit(status)  # (its usage lines said infer.py)
