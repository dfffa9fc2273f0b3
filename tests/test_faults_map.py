"""Fault map files: round trips and clear errors for malformed input."""

import json

import numpy as np
import pytest

from mcel_train.faults import FaultMap, FaultMapError
from mcel_train.memory import Memory


def _map():
    return FaultMap(["a", "b"], [0, 1, 1], [3, 0, 2], [1, 0, 5], [0, 1, 2],
                    {"fault_model": "flip", "seed": 1})


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_round_trip(tmp_path, suffix):
    fm = _map()
    back = FaultMap.load(fm.save(tmp_path / f"m{suffix}"))
    assert back.memory_names == fm.memory_names and back.meta == fm.meta
    for key in ("memory", "word", "bit", "kind"):
        assert np.array_equal(getattr(back, key), getattr(fm, key))


def test_json_is_readable(tmp_path):
    d = json.loads(_map().save(tmp_path / "m.json").read_text())
    assert d["faults"][1] == {"memory": "b", "word": 0, "bit": 0, "kind": "stuck0"}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(format="x"), "not a fault map"),
        (lambda d: d.update(version=9), "version"),
        (lambda d: d["faults"][0].update(kind="melt"), "kind 'melt'"),
        (lambda d: d["faults"][0].update(memory="zz"), "'zz' not in"),
        (lambda d: d["faults"][0].update(word=-1), "non-negative"),
        (lambda d: d["faults"][0].pop("bit"), "exactly memory, word, bit, kind"),
        (lambda d: d.update(faults={}), "'faults' must be a list"),
    ],
)
def test_malformed_json_names_the_problem(tmp_path, mutate, message):
    d = _map().to_json_dict()
    mutate(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(FaultMapError, match=message):
        FaultMap.load(path)


def test_unreadable_files(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(FaultMapError, match="unreadable"):
        FaultMap.load(tmp_path / "x.json")
    (tmp_path / "x.npz").write_bytes(b"garbage")
    with pytest.raises(FaultMapError, match="x.npz"):
        FaultMap.load(tmp_path / "x.npz")
    with pytest.raises(FaultMapError, match="no such"):
        FaultMap.load(tmp_path / "missing.json")
    np.savez(tmp_path / "y.npz", word=np.zeros(1))
    with pytest.raises(FaultMapError, match="missing arrays"):
        FaultMap.load(tmp_path / "y.npz")


def test_validate_against_memories():
    mems = [Memory("a", 2, 2, 2), Memory("b", 2, 4, 8)]
    _map().validate(mems)
    with pytest.raises(FaultMapError, match="bit index"):
        FaultMap(["a"], [0], [0], [2], [0]).validate(mems)
    with pytest.raises(FaultMapError, match="does not exist"):
        FaultMap(["c"], [0], [0], [0], [0]).validate(mems)



def test_positions_differing_in_one_coordinate_are_distinct_and_a_repeat_anywhere_is_found():
    """Faults sharing two of (memory, word, bit) are distinct positions; one repeated position
    among thousands, wherever it sits, is refused."""
    for memory, word, bit in (([0, 1], [3, 3], [1, 1]), ([0, 0], [3, 4], [1, 1]), ([0, 0], [3, 3], [1, 2])):
        assert len(FaultMap(["a", "b"], memory, word, bit, [0, 0])) == 2
    rng = np.random.default_rng(0)
    flat = rng.choice(2 * 5000 * 8, size=3000, replace=False)
    memory, word, bit = flat // (5000 * 8), flat // 8 % 5000, flat % 8
    kind = np.zeros(len(flat), dtype=np.int8)
    FaultMap(["a", "b"], memory, word, bit, kind)
    at = rng.permutation(len(flat))[:2]
    memory[at[0]], word[at[0]], bit[at[0]] = memory[at[1]], word[at[1]], bit[at[1]]
    with pytest.raises(FaultMapError, match="more than once"):
        FaultMap(["a", "b"], memory, word, bit, kind)


def test_a_repeated_position_is_refused_on_every_path(tmp_path):
    """A flip and a stuck-at on the same bit would depend on their order: no path may accept it."""
    with pytest.raises(FaultMapError, match="more than once"):
        FaultMap(["a"], [0, 0], [1, 1], [0, 0], [0, 1])
    ok = FaultMap(["a"], [0, 0], [1, 1], [0, 1], [0, 1])
    for suffix in (".json", ".npz"):
        path = ok.save(tmp_path / f"m{suffix}")
        if suffix == ".json":
            d = json.loads(path.read_text())
            d["faults"][1]["bit"] = 0
            path.write_text(json.dumps(d))
        else:
            np.savez(path, format=np.array("mcel-faultmap"), version=np.array(1),
                     memory_names=np.array(json.dumps(["a"])), memory=ok.memory, word=ok.word,
                     bit=np.array([0, 0]), kind=ok.kind)
        with pytest.raises(FaultMapError, match="more than once"):
            FaultMap.load(path)
