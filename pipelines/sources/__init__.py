"""Candidate sources: one module each, behind the interface and registry of `pipelines.sources.base`."""
