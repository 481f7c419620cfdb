"""Repairing dying units: activation swaps (``swap.py``), ReDo re-initialisation
(``redo.py``), the before/after proof (``proof.py``), the file written in the input's form
(``save.py``), and ``repair()`` (``repair.py``) that runs them in order.

Importing this package loads nothing heavy: the command line reads ``TARGETS`` for its
``--to`` choices before torch is imported.
"""

from __future__ import annotations

#: What ``to=`` accepts: an activation kind of the registry that ``fix`` swaps to, or
#: ``reinit`` (ReDo). A test keeps it equal to the registry's swappable kinds.
SWAPS = ("leaky_relu", "prelu", "elu")
TARGETS = (*SWAPS, "reinit")
