"""Usage: the token ledger, its batched writer, Prometheus metrics and the usage report.

- ``aggregates``: The usage report's database work: sums by group and percentiles, in as few
  scans as possible.
- ``checks``: Checks of the usage ledger, metrics and health settings:
  copilotedge.E020-E029, W020-W029.
- ``ledger``: The token-usage ledger: what a turn cost, written off the stream's hot path.
- ``metrics``: Prometheus metrics, updated from one place: each turn's usage record
  (:func:`observe_record`).
- ``report``: Usage-report numbers, aggregated in the database (see
  :mod:`copilotedge.usage.aggregates`).
- ``writer``: Writing the usage ledger: group-committed batches, retries, and
  ``usage_recorded``.
"""
