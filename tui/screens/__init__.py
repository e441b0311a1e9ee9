"""The app's screens, one per file, each with its help text in a Markdown file beside it."""
