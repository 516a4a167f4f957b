"""The reference controller: drives any worker that speaks PROTOCOL.md.

Modules, in the order a run meets them: :mod:`.plan` (the plan file,
validated with path and line), :mod:`.dispatch` (assignments split by free
capacity, phased), :mod:`.lifecycle` (run statuses), :mod:`.hub` (worker
WebSockets), :mod:`.runs` (the run manager), :mod:`.storage` (SQLite),
:mod:`.aggregates` and :mod:`.thresholds` (results), :mod:`.report` (HTML and
JSON), :mod:`.live` (terminal progress), :mod:`.server` (composition and
REST API), :mod:`.runner` (one plan to its end: the body of ``sipswarm run``).
"""
