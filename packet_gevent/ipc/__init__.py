"""The process layer: forking safely under gevent, supervising children, and the private
master<->child channel.  Knows nothing of the reactor, workers or pools.

``process`` (spawn_child, ChildProcess), ``supervision`` (ChildLink, Backoff, the set-up
failure protocol), ``pickling`` (out-of-band pickle 5), ``wire`` (the message format),
``channel`` (the hub end) and ``blocking`` (the end for a child without a hub).
"""
