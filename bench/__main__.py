"""`python -m bench`: the publish throughput benchmark (`bench.publish`)."""

from bench.publish import main

main()
