"""Outputs: one emitter per format behind the format registry (``formats.py``)."""
