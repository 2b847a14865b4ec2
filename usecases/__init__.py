"""Use cases: one function per thing a person or a job does (upload, delete, re-index, ask, evaluate, fix).

Each owns its transaction and enqueues only after it committed, through the ``TaskQueue`` it is handed (the
caller's task backend). Pages, the CLI, the task bodies, the demo loader, the benchmarks and the tests call these;
nothing else enqueues. The access checks of the next issue go here too: an ``actor`` keyword, checked first.
"""
