"""The engine: dispatch of ready jobs and watching of running ones (exits, timeouts on a
deadline heap, budgets, cancellations); a finished job goes to
:mod:`orchestrator.lifecycle.finalizer`.
"""
