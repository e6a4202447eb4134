"""A pytest plugin for the self-tests: non-reentrant checkpointing recomputes each region's whole
forward, as it would if torch turned its early stop off (``set_checkpoint_early_stop(False)``,
entered for the whole session), so each region recomputes more than up to its last save."""

import torch.utils.checkpoint

#: Held for the session: the context manager restores the setting when it is collected.
NO_EARLY_STOP = torch.utils.checkpoint.set_checkpoint_early_stop(False)
NO_EARLY_STOP.__enter__()
