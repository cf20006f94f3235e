"""Per-rank shards of a batch stream: disjoint, together one process's batch, resumable anywhere."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, IterableDataset

from mergekit_vision.engine.streams import BatchStream


class Numbers(Dataset):
    """Sample ``i`` is an image filled with ``i`` (its identity survives collation)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.full((3, 2, 2), i, dtype=torch.uint8)}


class NumberStream(IterableDataset):
    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        return (Numbers(self.n)[i] for i in range(self.n))


def ids(batch: dict) -> list[int]:
    return batch["image"][:, 0, 0, 0].tolist()


def streams(dataset, *, world: int, batch: int, start=None) -> list[BatchStream]:
    return [
        BatchStream(dataset, batch_size=batch, seed=3, start=start, rank=r, world_size=world)
        for r in range(world)
    ]


def test_ranks_split_one_process_batches_into_disjoint_strides():
    dataset = Numbers(10)  # 3 steps of 4 cross an epoch boundary
    (alone,) = streams(dataset, world=1, batch=4)
    ranks = streams(dataset, world=2, batch=2)
    for _ in range(3):
        whole = ids(alone.next())
        parts = [ids(s.next()) for s in ranks]
        assert parts == [whole[0::2], whole[1::2]]
        assert [s.position() for s in ranks] == [alone.position()] * 2


def test_a_two_rank_position_resumes_in_one_process_and_back():
    dataset = Numbers(10)
    (alone,) = streams(dataset, world=1, batch=4)
    history = [ids(alone.next()) for _ in range(4)]
    ranks = streams(dataset, world=2, batch=2)
    for _ in range(2):
        [s.next() for s in ranks]
    (resumed,) = streams(dataset, world=1, batch=4, start=ranks[0].position())
    assert ids(resumed.next()) == history[2]
    back = streams(dataset, world=2, batch=2, start=resumed.position())
    assert [ids(s.next()) for s in back] == [history[3][0::2], history[3][1::2]]


def test_iterable_datasets_are_strided_alike():
    (alone,) = streams(NumberStream(12), world=1, batch=4)
    whole = [ids(alone.next()) for _ in range(2)]
    ranks = streams(NumberStream(12), world=2, batch=2, start={"epoch": 0, "offset": 4})
    assert [ids(s.next()) for s in ranks] == [whole[1][0::2], whole[1][1::2]]
