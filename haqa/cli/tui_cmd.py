"""``haqa tui``: the Textual app (imported only when the command runs)."""
