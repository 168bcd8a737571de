"""The life of a job, as idempotent steps over saved state.

Read it in the order of a job's life: ``intake`` (claim a settled folder, validate it), ``submission``
(stage the inputs, pre-flight, submit exactly once), ``polling`` (one batched status request per backend),
``requests`` (cancel and retry, from the CLI or a CANCEL file), ``collection`` (deliver the results, finish
the folder). ``failures`` is the failure policy (backoff, budget, hold, pause; retries live there and
nowhere else), ``base`` what the parts share, ``core`` the pump that dispatches due steps to workers,
``breaker`` the circuit breakers around remote services, ``crashpoints`` the kill -9 points of the tests.
"""
