"""The command line and the demo: the shell on top of the stage packages.

`skewless_cli.cli` is the `skewless` script (Typer); `skewless_cli.demo` runs the whole loop
once. Both call `training`, `serving` and `monitoring`, which in turn build on the `skewless`
core; nothing below imports this package.
"""
