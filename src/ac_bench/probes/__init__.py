"""Probes: what a training step is measured with (memory, FLOPs, timing, the attention kernel)
and the device seam (``device``: allocator statistics, synchronisation, out-of-memory, keys)."""
