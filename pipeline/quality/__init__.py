"""Data contracts checked with Great Expectations (suites live in `schemas/expectations/`)."""
