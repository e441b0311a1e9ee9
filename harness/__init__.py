"""The experiment harness: recorded grids of deployments (``grid.py``) and brains compared on
them at equal budgets over seeds (``compare.py``). It drives whole runs, so it sits above the
graph; nothing below imports it."""
