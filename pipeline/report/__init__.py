"""Output people look at: console summaries (and, later, the HTML report)."""
