import os
import stat

import pytest
import torch

from tdabench.harness.core.storage import (
    CorruptFileError,
    atomic_write_bytes,
    load_or_compute,
    load_verified,
    save_verified,
)
from tdabench.harness.read.results import append_record


def test_roundtrip_and_checksum(tmp_path):
    p = save_verified({"x": torch.arange(5)}, tmp_path / "a.pt")
    assert torch.equal(load_verified(p)["x"], torch.arange(5))
    assert (tmp_path / "a.pt.sha256").exists()
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_checksum"])
def test_damaged_file_is_detected(tmp_path, damage):
    p = save_verified(torch.arange(1000), tmp_path / "a.pt")
    data = p.read_bytes()
    if damage == "truncate":
        p.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        p.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    else:
        (tmp_path / "a.pt.sha256").unlink()
    with pytest.raises(CorruptFileError):
        load_verified(p)


def test_load_or_compute_caches_and_recomputes_damage(tmp_path):
    calls, msgs = [], []

    def compute():
        calls.append(1)
        return torch.ones(3)

    p = tmp_path / "c.pt"
    load_or_compute(p, compute, "thing", msgs.append)
    load_or_compute(p, compute, "thing", msgs.append)
    assert len(calls) == 1
    p.write_bytes(b"garbage")
    out = load_or_compute(p, compute, "thing", msgs.append)
    assert len(calls) == 2 and torch.equal(out, torch.ones(3))
    assert any("damaged, recomputing" in m for m in msgs)


@pytest.fixture
def umask_0022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_honour_the_umask(tmp_path, umask_0022):
    atomic_write_bytes(tmp_path / "report.html", b"<html></html>")
    save_verified(torch.ones(2), tmp_path / "scores" / "a.pt")
    append_record(tmp_path, {"run_id": "x"})
    load_or_compute(tmp_path / "cache" / "c.pt", lambda: torch.zeros(2), "thing")
    files = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith((".lock", ".holder"))]
    assert {p.name for p in files} >= {"report.html", "a.pt", "a.pt.sha256", "runs.jsonl", "c.pt.cost.json"}
    assert {p.name: oct(_mode(p)) for p in files} == {p.name: oct(0o644) for p in files}
    os.umask(0o077)  # a private umask stays private
    atomic_write_bytes(tmp_path / "private.md", b"x")
    assert _mode(tmp_path / "private.md") == 0o600
