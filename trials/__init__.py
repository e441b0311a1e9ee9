"""Running trials: one interface and its backends.

``Toolbox`` (``toolbox.py``) is what the agents may do to the world, measured: probe, microbench,
fine-tune, evaluate, deploy, benchmark a baseline, estimate memory. ``LiveToolbox`` runs the real
tools in this process; ``IsolatedToolbox`` (``isolation.py``) runs each call in a child process
(``worker.py``) with a timeout and a memory limit, recorded in a registry (``registry.py``) so a
resumed run kills what a killed one left running. ``RayToolbox`` (``ray_backend.py``) sends each
call to a Ray cluster as a task placed by what it measures (``cluster.py``); only it imports Ray,
and only with ``--cluster``. The agents import this package; it imports the tools and haqa's
core, never the agents or the graph.
"""
