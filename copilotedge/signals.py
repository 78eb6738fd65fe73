"""The app's public signals.

``usage_recorded``: sent once per turn, after its usage record is written (``saved=True``)
or after every attempt to write it failed (``saved=False``: the record has no primary key,
but billing still learns what was spent). Arguments: ``record`` (the
:class:`~copilotedge.models.UsageRecord`) and ``saved``. Receivers may be sync or async;
one that raises is logged and does not stop the others.
"""

from __future__ import annotations

from django.dispatch import Signal

usage_recorded = Signal()
