"""Shoal: device-cloud collaborative learning for on-device recommendation."""

__version__ = "0.1.0"
