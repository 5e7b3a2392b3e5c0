"""`python -m bench`: the publish benchmark (`bench.cli`)."""

from bench.cli import main

main()
