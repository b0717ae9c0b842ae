"""``python -m arbitrary_nst COMMAND ...``: same as ``python infer.py``."""
from .cli import main

raise SystemExit(main(prog="python -m arbitrary_nst"))  # (its usage lines said infer.py)
