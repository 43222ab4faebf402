"""Output people look at: console summaries, the HTML report, the generated README sections."""
