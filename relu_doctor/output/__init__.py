"""Output emitters: pure functions that turn reports and findings into text or documents."""
