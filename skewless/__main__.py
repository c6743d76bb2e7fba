"""`python -m skewless`: the same command line as the `skewless` script."""

from skewless.cli import main

main()
