"""Evaluation: localizer adapters, streaming metrics, protocols, the runner and stress tests."""
