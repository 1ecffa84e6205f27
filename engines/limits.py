"""Limits every entry point (CLI flags, training config, export) checks its input against. Imports nothing."""

# The largest model input side. 65536 asked the letterbox for 38 GB and ended in an allocator's traceback;
# past 8192 the training loader ran out of memory the same way.
MAX_IMGSZ = 8192
