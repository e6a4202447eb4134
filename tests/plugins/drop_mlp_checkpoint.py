"""A pytest plugin for the self-tests: the ``full`` strategy quietly stops checkpointing the
MLP sublayer, the kind of regression the deterministic gate exists to catch."""

import dataclasses

from models import strategies

strategies.STRATEGIES["full"] = dataclasses.replace(strategies.STRATEGIES["full"], sublayers=("attn",))
