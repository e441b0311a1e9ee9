"""The Textual app: live run, trials table, Pareto plot, replay. Reads the store only."""
