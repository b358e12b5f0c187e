"""lorakit.serving: Router (requests -> adapter ids), capacity arithmetic, synthetic adapters and request mixes."""

from __future__ import annotations

import pytest
import torch
from builders import tiny_llama

from lorakit.memory import llama_parameter_count
from lorakit.serving import (
    AdapterBank,
    Router,
    adapters_that_fit,
    llama_adapter_bytes,
    llama_base_bytes,
    popularity,
    random_adapter,
    request_mix,
)

QV = ["q_proj", "v_proj"]


@pytest.fixture
def bank():
    base = tiny_llama()
    bank = AdapterBank(base, QV, max_rank=8, capacity=4)
    for i, name in enumerate(("caesar", "copy", "rot2")):
        bank.add_tensors(name, *random_adapter(base, 4, QV, seed=i))
    return bank


def test_router_maps_keys_to_slot_ids(bank):
    router = Router(bank, {"tenant-a": "caesar", "tenant-b": "rot2", "free": None})
    ids = router.adapter_ids(["tenant-b", "free", "tenant-a", "tenant-b"])
    assert ids.dtype == torch.int64 and ids.tolist() == [2, -1, 0, 2]
    assert router.adapter_name("free") is None and router.adapter_id("tenant-a") == bank.id_of("caesar")
    assert router.grouped_order(["tenant-b", "free", "tenant-a", "tenant-b"]) == [1, 2, 0, 3]


def test_router_strict_and_fallback(bank):
    strict = Router(bank, {"a": "caesar"})
    with pytest.raises(ValueError, match="no route for key 'b'"):
        strict.adapter_ids(["a", "b"])
    lenient = Router(bank, {"a": "caesar"}, fallback="copy", strict=False)
    assert lenient.adapter_ids(["a", "b"]).tolist() == [0, 1]
    to_base = Router(bank, {"a": "caesar"}, strict=False)
    assert to_base.adapter_ids(["zzz"]).tolist() == [-1]


def test_router_follows_the_bank_at_call_time(bank):
    router = Router(bank, {"a": "copy", "late": "late"})
    with pytest.raises(ValueError, match="routes to adapter 'late', which is not in the bank"):
        router.adapter_ids(["late"])
    bank.remove("copy")
    with pytest.raises(ValueError, match="routes to adapter 'copy'"):
        router.adapter_ids(["a"])
    bank.add_tensors("late", *random_adapter(tiny_llama(), 2, QV, seed=9))
    assert router.adapter_ids(["late"]).tolist() == [1]  # the freed slot


def test_router_validates(bank):
    with pytest.raises(TypeError, match="bank must be"):
        Router("bank", {})
    with pytest.raises(TypeError, match="routes must be a mapping"):
        Router(bank, [("a", "caesar")])
    with pytest.raises(TypeError, match="adapter names"):
        Router(bank, {"a": 3})
    with pytest.raises(TypeError, match="fallback must be"):
        Router(bank, {}, fallback=0)
    with pytest.raises(TypeError, match="strict must be a bool"):
        Router(bank, {}, strict="yes")
    with pytest.raises(TypeError, match="keys must be a sequence"):
        Router(bank, {"a": "caesar"}).adapter_ids("a")


def test_llama_7b_adapter_is_about_ten_megabytes():
    # 32 layers x (q_proj + v_proj) x r (4096 + 4096) numbers, 2 bytes each
    assert llama_adapter_bytes("7B", r=8) == 32 * 2 * 8 * (4096 + 4096) * 2 == 8_388_608
    assert llama_adapter_bytes("7B", r=16, bytes_per_number=4) == 4 * llama_adapter_bytes("7B", r=8)
    assert llama_base_bytes("7B") == 2 * llama_parameter_count("7B")
    fit = adapters_that_fit(80 * 2**30, llama_base_bytes("7B"), llama_adapter_bytes("7B", r=8), 20 * 2**30)
    assert 3000 < fit < 8000  # "thousands fit"
    assert adapters_that_fit(10, 20, 1) == 0
    with pytest.raises(ValueError, match="adapter_bytes must be > 0"):
        adapters_that_fit(10, 1, 0)
    with pytest.raises(ValueError, match="memory_bytes must be a non-negative number"):
        adapters_that_fit(-1, 1, 1)
    with pytest.raises(ValueError, match="size must be one of"):
        llama_adapter_bytes("70B")


def test_popularity_and_request_mix():
    uniform, zipf = popularity(8), popularity(8, "zipf")
    assert torch.allclose(uniform.sum(), torch.tensor(1.0, dtype=torch.float64)) and bool((uniform == 1 / 8).all())
    assert torch.allclose(zipf.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert zipf[0] / zipf[1] == pytest.approx(2.0) and bool((zipf[:-1] > zipf[1:]).all())
    mix = request_mix(2000, 32, "zipf", seed=3)
    assert mix == request_mix(2000, 32, "zipf", seed=3) and min(mix) >= 0 and max(mix) < 32
    counts = torch.bincount(torch.tensor(mix), minlength=32).double() / 2000
    assert abs(counts[0] - popularity(32, "zipf")[0]) < 0.05  # the empirical share of the top adapter
    assert len(set(request_mix(64, 32, "uniform", seed=0))) > len(set(request_mix(64, 32, "zipf", seed=0)))
    with pytest.raises(ValueError, match="law must be one of"):
        popularity(4, "pareto")
    with pytest.raises(ValueError, match="n_requests must be a positive int"):
        request_mix(0, 4)
    with pytest.raises(ValueError, match="n_adapters must be a positive int"):
        popularity(0)


def test_random_adapter_is_seeded_and_nonzero():
    base = tiny_llama()
    (t1, c1), (t2, _) = random_adapter(base, 4, QV, seed=1), random_adapter(base, 4, QV, seed=1)
    assert c1.r == 4 and c1.alpha == 8 and set(t1) == set(t2) and len(t1) == 2 * 2 * 2
    assert all(torch.equal(t1[k], t2[k]) and t1[k].abs().max() > 0 for k in t1)
