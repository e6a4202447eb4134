"""A pytest plugin for the self-tests: the ``full`` policy quietly stops checkpointing the
MLP sublayer, the kind of regression the deterministic gate exists to catch."""

import dataclasses

from ac_bench.models.ac import registry

registry.POLICIES["full"] = dataclasses.replace(registry.POLICIES["full"], sublayers=("attn",))
