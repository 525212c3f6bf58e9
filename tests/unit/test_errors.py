"""The error tree: stable codes, whose fault, and docs/errors.md kept true."""

from __future__ import annotations

import pathlib
import re

import pytest

import dengine
from dengine import errors

DOC = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text()


def coded_classes() -> list[type[errors.DengineError]]:
    # Only the tree itself: tests elsewhere may subclass errors for their fakes.
    return [c for c in errors._all_error_classes() if c.code and c.__module__ == "dengine.errors"]


def test_codes_are_unique_per_class() -> None:
    codes = [c.code for c in coded_classes()]
    assert len(codes) == len(set(codes))


def test_every_code_constant_is_documented() -> None:
    documented = {int(m) for m in re.findall(r"^\| (\d{4}) \|", DOC, flags=re.M)}
    constants = {v for k, v in vars(errors.ErrorCode).items() if k.isupper()}
    assert constants == documented


@pytest.mark.parametrize("cls", coded_classes(), ids=lambda c: c.__name__)
def test_every_class_is_documented_with_its_code(cls: type[errors.DengineError]) -> None:
    assert re.search(rf"^\| {cls.code} \| `{cls.__name__}` \|", DOC, flags=re.M)


@pytest.mark.parametrize("cls", coded_classes(), ids=lambda c: c.__name__)
def test_error_for_code_round_trips(cls: type[errors.DengineError]) -> None:
    assert errors.error_for_code(cls.code) is cls


def test_whose_fault() -> None:
    assert issubclass(errors.InvalidArgument, errors.UsageError)
    assert issubclass(errors.NotLeader, errors.ClusterError)
    assert issubclass(errors.EngineStopped, errors.Unavailable)
    assert issubclass(errors.StorageCorrupted, errors.StorageError)
    assert not issubclass(errors.StorageError, errors.ClusterError)


def test_not_leader_carries_hint_and_config_error_sentences() -> None:
    e = dengine.NotLeader(leader_id=3, leader_address="127.0.0.1:7003")
    assert (e.leader_id, e.leader_address, e.code) == (3, "127.0.0.1:7003", 2001)
    c = dengine.ConfigError(["a is bad.", "b is bad."])
    assert c.problems == ["a is bad.", "b is bad."] and "a is bad. b is bad." in str(c)


def test_unknown_code_maps_to_base() -> None:
    assert errors.error_for_code(99999) is errors.DengineError
