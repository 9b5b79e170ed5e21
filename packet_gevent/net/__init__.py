"""The reactor layer: connections, servers and the core Reactor.

Imports only the ground floor (errors, framing, codec, timers, runner) and
knows nothing of processes: workers and the pool plug into a reactor as
services (see :meth:`Reactor.add_service`).
"""
