"""skewless: one feature declaration for training and serving, skew measured.

prometheus_client picks how it stores metric values once, when `prometheus_client.values` is
first imported: in process memory, or in memory-mapped files shared by every registry of the
process when `PROMETHEUS_MULTIPROC_DIR` is set. Feast's `feast.metrics` module, imported lazily
by some Feast calls, sets that variable (to a `feast_metrics_*` temporary folder) in its
process, and so in every child process started after it. In shared-file mode two workers'
counters in one process (or the worker's and the HTTP enricher's) add up. Every skewless
process imports this package first, so Feast's leftover is dropped and the in-process store
chosen here, before any Feast import can change it. A folder set on purpose is kept; the
metrics then refuse to start, naming the variable.
"""

import os
from pathlib import Path

FEAST_METRICS_FOLDER_PREFIX = "feast_metrics_"
for _variable in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR"):
    if Path(os.environ.get(_variable, "")).name.startswith(FEAST_METRICS_FOLDER_PREFIX):
        del os.environ[_variable]

import prometheus_client.values  # noqa: E402, F401  (after the clean-up above, on purpose)
