"""How the suite measures (memory, FLOPs, timing, baselines, report) and what must hold."""
