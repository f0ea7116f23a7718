"""Every move of a task: the lifecycle functions (one writer of the stage), the finalizer
(a finished job's facts, the kernel's decision, the claim, the move), the transitions
and the pool that runs their crossings, the post-deploy health window, the human actions
(service), budgets, feedback and next steps.
"""
