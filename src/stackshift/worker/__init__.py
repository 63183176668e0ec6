"""Executing runs: the claim loop, handler execution, leases and maintenance."""

from .worker import Worker

__all__ = ["Worker"]
