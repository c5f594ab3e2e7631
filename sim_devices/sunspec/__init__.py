"""Simulated SunSpec devices: images built from pysunspec2's model definitions (image.py) over the shared physics,
and a stand-alone server for `[simulation]` tables of SunSpec groups (fleet.py)."""
