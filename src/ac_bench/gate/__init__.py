"""The gate: deterministic figures against committed baselines (``baselines``) and where
timing history is stored (``timing_storage``)."""
