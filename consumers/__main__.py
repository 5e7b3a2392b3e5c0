"""`python -m consumers consume MODULE:GROUP` / `python -m consumers dlq ...` (see cli.py)."""

from consumers.cli import main

main()
