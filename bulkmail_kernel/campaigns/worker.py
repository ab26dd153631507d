"""The worker as users start it: the engine's send loop plus the campaigns' own steps.

The engine may not import campaigns, so the steps a pass runs besides sending (deciding
A/B tests whose wait is over) are added here; ``bm.run_worker()`` and ``bulkmail
run-worker`` both come through this, so a notebook's worker decides tests as the
service does.
"""

from __future__ import annotations

import functools
from typing import Any

from bulkmail_kernel.campaigns.abtests import ab_test_step
from bulkmail_kernel.engine.worker import run_worker as _engine_run_worker

#: What every pass runs before sending, unless ``steps=`` says otherwise.
DEFAULT_STEPS = (ab_test_step,)


@functools.wraps(_engine_run_worker)
def run_worker(**kwargs: Any) -> int:
    """Run the engine's worker with ``steps`` defaulting to ``DEFAULT_STEPS``."""
    kwargs.setdefault("steps", DEFAULT_STEPS)
    return _engine_run_worker(**kwargs)
