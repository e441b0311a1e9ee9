"""One line under the panes: stage │ trials used of the budget │ best so far │ elapsed │ state."""

from __future__ import annotations

from textual.widgets import Static


class StatusBar(Static):
    pass
