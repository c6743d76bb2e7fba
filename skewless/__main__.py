"""`python -m skewless`: the same command line as the `skewless` script.

An entry point only, run and never imported: the one place the core package names the
command-line package above it.
"""

from skewless_cli.cli import main

main()
