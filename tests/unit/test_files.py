"""Atomic writes and locks: a failed or killed write leaves the old file whole and no temporary behind."""

import threading
import time

import pytest

from mmfed.files import locked, write_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "state" / "budget.json"
    write_atomic(target, '{"history": []}')
    assert target.read_text() == '{"history": []}'

    def half_written(tmp):
        tmp.write_text('{"hist')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, half_written)
    assert target.read_text() == '{"history": []}'
    assert sorted(p.name for p in target.parent.iterdir()) == ["budget.json"]
    write_atomic(target, b"\x00\x01", durable=False)
    assert target.read_bytes() == b"\x00\x01"


def test_the_lock_lets_one_writer_in_at_a_time(tmp_path):
    inside, overlaps = [], []

    def writer():
        with locked(tmp_path / "ledger.jsonl"):
            inside.append(1)
            overlaps.append(len(inside))
            time.sleep(0.02)
            inside.pop()

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [1, 1, 1, 1]
