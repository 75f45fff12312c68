"""Packaged data: the demo test-driver node file."""
