"""The store's records as dictionaries: what ``to_dict`` gives every API answer."""

from __future__ import annotations

from dataclasses import asdict

from orchestrator.store.records import Event, Task


def test_to_dict_is_asdict_and_copies_json_values() -> None:
    task = Task(
        id=1,
        work_item="W-1",
        repository="/srv/r",
        title="t",
        description="",
        stage="analysis",
        version=0,
        attempt=1,
        rollback_count=0,
        failed_reason=None,
        branch="orch/W-1",
        base_branch="main",
        base_sha="0" * 40,
        worktree="/wt/W-1",
        created_at=1.0,
        updated_at=2.0,
        origin={"tracker": "plane", "labels": ["a"]},
    )
    event = Event(1, 1, None, "task.created", "t", None, "analysis", "", {"n": [1]}, 1.0)

    for record in (task, event):
        data = record.to_dict()
        assert data == asdict(record)
        assert list(data) == list(asdict(record))
    data = task.to_dict()
    data["origin"]["labels"].append("b")  # a change of the answer leaves the record alone
    assert task.origin == {"tracker": "plane", "labels": ["a"]}
