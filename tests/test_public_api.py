"""The public API: every name in __all__ resolves; errors share one base."""
import packet_gevent
from packet_gevent import errors


def test_every_public_name_resolves():
    for name in packet_gevent.__all__:
        assert getattr(packet_gevent, name) is not None, name


def test_every_error_is_a_packet_error():
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.PacketError), name
        assert getattr(packet_gevent, name, cls) is cls
