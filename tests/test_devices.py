"""GPU steps on a box with several cards each take a card of their own (flock per card)."""

from __future__ import annotations

import multiprocessing as mp

from blindspot_assets.devices import choose_device, claim_card


def _claim(lock_dir: str, n_cards: int, out: mp.Queue, release: mp.Event) -> None:
    from pathlib import Path

    first = claim_card(n_cards, Path(lock_dir))
    out.put((first, claim_card(n_cards, Path(lock_dir))))  # asked twice: the same card
    release.wait(30)


def test_processes_claim_distinct_cards_until_all_are_taken(tmp_path):
    ctx = mp.get_context("fork")
    out, release = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path), 3, out, release)) for _ in range(3)]
    for p in procs:
        p.start()
    claims = [out.get(timeout=30) for _ in procs]
    assert all(a == b for a, b in claims)
    assert sorted(a for a, _ in claims) == [0, 1, 2]
    # more steps while all three are held share one (a pool limit above the card count): the
    # card that each one's process id picks, as documented; steps are started until every
    # card has been picked, so a constant choice cannot pass
    extras: list = []
    picked: set[int] = set()
    while picked != {0, 1, 2} and len(extras) < 12:
        extras.append(ctx.Process(target=_claim, args=(str(tmp_path), 3, out, release)))
        extras[-1].start()
        shared, again = out.get(timeout=30)
        assert shared == again == extras[-1].pid % 3
        picked.add(shared)
    assert picked == {0, 1, 2}
    release.set()
    for p in [*procs, *extras]:
        p.join(10)
    # the cards are free again once their processes ended
    later = ctx.Process(target=_claim, args=(str(tmp_path), 3, out, release))
    later.start()
    assert out.get(timeout=30)[0] == 0
    later.join(10)


def test_auto_takes_a_card_of_its_own_on_a_multi_card_box(tmp_path, monkeypatch):
    import torch

    from blindspot_assets import devices

    assert choose_device("cuda:3") == "cuda:3" and choose_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert choose_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(devices, "_claimed", {})
    (tmp_path / "card-0.lock").touch()
    import fcntl

    with open(tmp_path / "card-0.lock", "ab") as held:  # another step holds card 0
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert choose_device("auto") == "cuda:1"
        assert choose_device(None) == "cuda:1"  # the process keeps its card
