"""Thin Kopf handlers: parse, decide with ``domain``, apply with ``kube``."""
