"""atdt_train: the workstation side of AT/DT.

Simulated street domains, dataset readers, the task networks N = D∘E and the transfer network G,
the four AT/DT stages, evaluation and reports, and export of the deployable chain.
"""

__version__ = "0.1.0"

import os as _os

import atdt_ros as _atdt_ros  # noqa: F401  (telemetry off before any library loads)

# OpenMP threads that sleep instead of spinning while they wait: on a loaded CPU, spinning
# threads made a training step ~15x slower with 2 threads (measured); idle cost is negligible.
# Must be set before torch loads libgomp, hence here.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
