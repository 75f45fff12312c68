"""Where metrics go: stdout and Graphite plaintext destinations."""
