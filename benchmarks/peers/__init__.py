"""The detectors that the quality benchmark compares.

``methods`` defines every method and imports its package only when the method
is built. ``deepod_adapter`` imports deepod when it is imported itself, so only
the deepod methods load it.
"""
