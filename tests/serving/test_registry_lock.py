"""The registry's read-modify-writes are serialised across processes: no promotion is lost.

Two processes promote two real packaged versions (the `package` stage's output on the fixture model)
at the same moments, released together by a barrier, round after round. Without the lock both read the
same pointer file and the second write drops the first one's event; with it every promotion is recorded,
each names the one before it as `previous`, and production is the last one recorded.
"""

from __future__ import annotations

import multiprocessing
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.errors import DataError
from tests.serving.conftest import registry_state

pytestmark = [pytest.mark.slow, pytest.mark.real_llm]

ROUNDS = 20


@pytest.fixture
def two_tags(two_versions, tmp_path) -> tuple[Path, str, str]:
    """A private copy of a BentoML home holding two packaged versions of the fixture model (the second on
    re-written data files, so another content hash: tests/serving/conftest.py `two_versions`), and their tags."""
    home = tmp_path / "home"
    shutil.copytree(two_versions.home, home)
    return home, two_versions.champion, two_versions.challenger


def promote_in_rounds(home: str, tag: str, name: str, barrier) -> None:
    """One contender (a separate process): each round, wait for the other, then promote `tag`."""
    from components.serving.registry import set_production

    for r in range(ROUNDS):
        barrier.wait(timeout=120)
        set_production(tag, "promote", f"{name} round {r}", home)


def test_concurrent_promotions_are_all_recorded_and_one_ends_in_production(two_tags):
    home, a, b = two_tags
    before = registry_state(home)["events"]
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, as two `package` runs would be
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=promote_in_rounds, args=(str(home), tag, name, barrier))
             for tag, name in ((a, "A"), (b, "B"))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    assert [p.exitcode for p in procs] == [0, 0]

    state = registry_state(home)
    new = state["events"][len(before):]
    reasons = sorted(e["reason"] for e in new)
    assert reasons == sorted(f"{n} round {r}" for n in "AB" for r in range(ROUNDS)), \
        f"{2 * ROUNDS - len(new)} promotion(s) lost: {reasons}"
    # Serialised: every promotion saw the one written just before it.
    chain = [before[-1]["tag"]] + [e["tag"] for e in new[:-1]]
    assert [e["previous"] for e in new] == chain
    assert state["production"] == new[-1]["tag"] and state["production"] in (a, b)


def test_a_held_lock_makes_a_promotion_wait_then_fail_naming_the_lock(two_tags, monkeypatch):
    from components.serving import registry

    home, a, _ = two_tags
    lock_file = registry.pointer_path(home).with_name("llmsrec.json.lock")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
        "print('held', flush=True); time.sleep(60)"), str(lock_file)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        production = registry.production_tag(home)
        monkeypatch.setattr(registry, "LOCK_TIMEOUT_S", 0.5)
        t0 = time.monotonic()
        with pytest.raises(DataError, match=r"llmsrec\.json\.lock.*held this lock.*retry"):
            registry.set_production(a, "promote", "while locked", home)
        assert time.monotonic() - t0 >= 0.5
        assert registry.production_tag(home) == production  # nothing was written
    finally:
        holder.kill()
        holder.wait()
    # Released when its holder died (as after `kill -9`): the next promotion goes through.
    assert registry.set_production(a, "promote", "after the holder died", home) == a
    assert registry_state(home)["events"][-1]["reason"] == "after the holder died"
