"""The process layer: forking safely under gevent, supervising children, and
the private master<->child channel.  Knows nothing of the reactor."""
