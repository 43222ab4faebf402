"""Embedding drift: registered two-sample tests over traffic windows."""
