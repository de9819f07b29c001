"""Inference slots shared fairly between tenants (app/slots.py, issue 25)."""

from __future__ import annotations

import threading
import time

import pytest

from app.errors import ServiceBusy
from app.face.cores import waiting_outside
from app.slots import FairSlots, Tenant, current_tenant

A = Tenant("lobby", "key-a")
B = Tenant("door", "key-b")
C = Tenant("desk", "key-c")


def _hold_in_thread(slots: FairSlots, tenant: Tenant, release: threading.Event) -> threading.Thread:
    entered = threading.Event()

    def run() -> None:
        current_tenant.set(tenant)
        with slots.hold():
            entered.set()
            release.wait(5)

    thread = threading.Thread(target=run)
    thread.start()
    assert entered.wait(5)
    return thread


def test_slots_refuse_when_full() -> None:
    slots = FairSlots(limit=1, wait_seconds=0.05)
    release = threading.Event()
    worker = _hold_in_thread(slots, A, release)
    try:
        token = current_tenant.set(A)
        with pytest.raises(ServiceBusy) as info, slots.hold():
            pass
        current_tenant.reset(token)
        assert info.value.extra["retry_after"] >= 1
    finally:
        release.set()
        worker.join()
    with slots.hold():  # free again
        pass


def test_a_tenant_holding_nothing_takes_the_reserve_at_once() -> None:
    slots = FairSlots(limit=2, wait_seconds=0.05, reserve=1)
    release = threading.Event()
    workers = [_hold_in_thread(slots, A, release) for _ in range(2)]
    try:
        slots.acquire(B)  # A holds the limit; B holds nothing: no wait
        with pytest.raises(ServiceBusy):
            slots.acquire(C)  # the reserve is taken
        with pytest.raises(ServiceBusy):
            slots.acquire(A)  # A already holds slots: it may not use the reserve
        slots.release(B)
    finally:
        release.set()
        for w in workers:
            w.join()


def test_a_freed_slot_goes_to_the_tenant_holding_fewest() -> None:
    """A floods (three waiting before B asks), B asks once: B is served first."""
    slots = FairSlots(limit=1, wait_seconds=5, reserve=0)
    order: list[str] = []
    lock = threading.Lock()
    slots.acquire(A)

    def ask(tenant: Tenant, name: str) -> threading.Thread:
        def run() -> None:
            slots.acquire(tenant)
            with lock:
                order.append(name)
            time.sleep(0.01)
            slots.release(tenant)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    threads = [ask(A, f"a{i}") for i in range(3)]
    time.sleep(0.1)
    threads.append(ask(B, "b"))
    time.sleep(0.1)
    slots.release(A)
    for t in threads:
        t.join()
    assert order[0] == "b", order
    assert sorted(order[1:]) == ["a0", "a1", "a2"]


def test_fair_grant_picks_the_least_busy_collection_first() -> None:
    same_collection = Tenant("lobby", "key-a2")
    slots = FairSlots(limit=2, wait_seconds=5, reserve=0)
    slots.acquire(A)
    slots.acquire(B)
    got: list[Tenant] = []

    def ask(tenant: Tenant) -> threading.Thread:
        thread = threading.Thread(target=lambda: (slots.acquire(tenant), got.append(tenant)))
        thread.start()
        return thread

    t1 = ask(same_collection)  # holds nothing, but its collection holds one
    time.sleep(0.05)
    t2 = ask(C)  # a collection holding nothing: first
    time.sleep(0.05)
    slots.release(B)
    t2.join(5)
    assert got == [C]
    slots.release(A)
    t1.join(5)
    assert got == [C, same_collection]


def test_waiting_outside_lends_the_slot_and_takes_one_back() -> None:
    slots = FairSlots(limit=1, wait_seconds=2, reserve=0)
    lent = threading.Event()
    back = threading.Event()
    other_ran = threading.Event()

    def holder() -> None:
        current_tenant.set(A)
        with slots.hold():
            with waiting_outside():
                lent.set()
                assert other_ran.wait(5)
            back.set()

    thread = threading.Thread(target=holder)
    thread.start()
    assert lent.wait(5)
    with slots.hold():  # the anonymous tenant gets the lent slot while A waits outside
        other_ran.set()
        time.sleep(0.05)
        assert not back.is_set()  # A waits for a slot again
    thread.join(5)
    assert back.is_set()
    assert slots.running == 0
