"""The output side: samples in, metrics out (publisher.py), to every sink (sinks/)."""
