"""ctxbench: the runner, measurements, results store, tables and CLI."""
__version__ = "0.1.0"
