"""Where metrics go: the Sink seam (base.py), the factory that makes sinks from the
configuration (factory.py), and stdout and Graphite plaintext destinations (in memory, or
spooled)."""
