"""The process layer's supervision pieces shared by workers and the pool: Backoff figures."""
from packet_gevent.ipc.supervision import Backoff
from packet_gevent.pool import scheduler
from packet_gevent.workers import manager


def test_worker_backoff_first_death_free_then_doubling_then_reset_after_a_healthy_run():
    b = Backoff(manager.RESTART_MIN_DELAY, manager.RESTART_MAX_DELAY, manager.RESTART_RESET,
                first=manager.RESTART_FIRST_DELAY)
    assert [b.delay(0.01) for _ in range(4)] == [0.0, 0.1, 0.2, 0.4]
    assert max(b.delay(0.01) for _ in range(20)) == manager.RESTART_MAX_DELAY
    assert b.delay(manager.RESTART_RESET) == 0.0     # a healthy run: counted as the first again
    assert b.delay(0.01) == 0.1


def test_pool_backoff_healthy_death_at_once_young_deaths_doubling_from_base():
    b = Backoff(scheduler.RESTART_MIN_DELAY, scheduler.RESTART_MAX_DELAY, scheduler.RESTART_RESET)
    assert b.delay(scheduler.RESTART_RESET) == 0.0
    assert [b.delay(0.0) for _ in range(3)] == [0.05, 0.1, 0.2]
    assert b.delay(5.0) == 0.0                      # not counted
    assert b.delay(0.0) == 0.05
    b.failed()
    assert b.delay(0.0) == 0.2
