"""atdt_train: the workstation side of AT/DT.

Simulated street domains, dataset readers, the task networks N = D∘E and the transfer network G,
the four AT/DT stages, evaluation and reports, and export of the deployable chain.
"""

__version__ = "0.1.0"
