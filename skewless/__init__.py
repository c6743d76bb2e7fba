"""skewless: one feature declaration for training and serving, skew measured.

prometheus_client picks how it stores metric values once, when `prometheus_client.values` is
first imported. Feast's `feast.metrics` module, imported lazily by some Feast calls, sets
`PROMETHEUS_MULTIPROC_DIR` for the whole process; a prometheus_client imported after that
keeps every value in memory-mapped files shared by all registries of the process, so two
workers' (or the worker's and the HTTP enricher's) counters would add up. Every skewless
process imports this package first, so the in-process value store is chosen here, before
any Feast import can change it.
"""

import prometheus_client.values  # noqa: F401  (see above: the import itself is the point)
