import pytest
import torch

from tdabench.harness.core.storage import CorruptFileError, load_or_compute, load_verified, save_verified


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
