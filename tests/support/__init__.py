"""Helpers the tests share: fixtures and builders imported by test modules and ``conftest.py``,
so no test module imports another. ``tests/`` is on ``sys.path`` while pytest runs (rootdir
conftest, no ``__init__.py`` there), which makes this package ``support``.

- ``zoo``: the tiny zoo model built once per session, and the 200M speed model
- ``grid``: a recorded grid on the tiny model, once per session (tabular runs)
- ``runs``: small run configs for tests that run the agents for real
- ``demo_store``: a store holding a deterministic expert run (TUI, snapshot and tmux tests)
- ``pilot``: running Textual Pilot tests and waiting on the app
- ``llm_stub``: a scripted OpenAI-compatible chat server
- ``faulty_toolbox``: a toolbox whose fine-tune crashes on purpose (trial isolation)
"""
