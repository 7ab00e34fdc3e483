"""Spookd: a Kubernetes device plugin for virtual devices defined in YAML."""

__version__ = "0.1.0"
