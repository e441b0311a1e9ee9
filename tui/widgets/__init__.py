"""The panes of the run and replay screens, one widget per file."""
