"""Environment use cases: ownership, in-use rules, validation, stats arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctm_core.commands import NewEnvironment, NewTask, PackageChange, RenameEnvironment
from ctm_core.environments import integer_shares
from ctm_core.errors import (
    AuthenticationRequired,
    EnvironmentExists,
    EnvironmentInUse,
    EnvironmentNotFound,
    InvalidEnvironmentName,
    InvalidPackageSpec,
    NotOwner,
    PackageOperationFailed,
)
from ctm_core.models import Principal, TaskStatus
from tests.unit.conftest import World


def test_creator_owns_the_environment(world: World) -> None:
    """Alice's environment can be changed by alice and admin, not by bob."""
    world.envs.create(world.alice, NewEnvironment(name="ml", packages=("six",)))
    with pytest.raises(NotOwner) as info:
        world.envs.install(world.bob, PackageChange.from_json("ml", {"packages": ["attrs"]}))
    assert info.value.error == "You do not have permission to modify packages in this environment"
    world.envs.install(world.alice, PackageChange.from_json("ml", {"packages": ["attrs"]}))
    world.envs.remove(
        world.admin, PackageChange.from_json("ml", {"packages": ["six"]}, names_only=True)
    )
    assert {p.name for p in world.envs.get_environment("ml").packages} >= {"attrs", "python"}


def test_pre_existing_environments_belong_to_no_one(world: World) -> None:
    """An environment made outside ctm can be changed by admins only."""
    world.backend.create("legacy", None, [])
    with pytest.raises(NotOwner):
        world.envs.delete(world.alice, "legacy")
    world.envs.delete(world.admin, "legacy")


def test_create_refuses_existing_name_without_touching_it(world: World) -> None:
    """Creating over an existing name is an error, never a replacement."""
    world.envs.create(world.alice, NewEnvironment(name="ml", packages=("six",)))
    with pytest.raises(EnvironmentExists):
        world.envs.create(world.bob, NewEnvironment(name="ml"))
    assert [c[0] for c in world.backend.calls] == ["create"]


def test_invalid_specs_never_reach_the_backend(world: World) -> None:
    """Option-like or shell specs are refused before any command runs."""
    world.envs.create(world.alice, NewEnvironment(name="ml"))
    for bad in (["--override-channels"], ["-c evil"], ["numpy; rm -rf /"], ["a b"]):
        with pytest.raises(InvalidPackageSpec):
            world.envs.install(world.alice, PackageChange.from_json("ml", {"packages": bad}))
    with pytest.raises(InvalidEnvironmentName):
        world.envs.create(world.alice, NewEnvironment(name="--prefix"))
    assert [c[0] for c in world.backend.calls] == ["create"]


def test_missing_environment_is_not_found_before_permission(world: World) -> None:
    """A missing env answers not-found, whoever asks."""
    with pytest.raises(EnvironmentNotFound):
        world.envs.install(world.bob, PackageChange.from_json("ghost", {"packages": ["six"]}))
    with pytest.raises(EnvironmentNotFound):
        world.envs.rename(world.bob, RenameEnvironment.from_json("ghost", {"new_name": "other"}))


def test_rename_refuses_existing_target_and_moves_tasks(world: World) -> None:
    """Rename to a taken name fails; otherwise tasks follow the new name."""
    world.envs.create(world.alice, NewEnvironment(name="a"))
    world.envs.create(world.alice, NewEnvironment(name="b"))
    world.tasks.create_task(
        world.alice,
        NewTask.from_json({"script": "print(1)", "conda_env": "a", "cron_expression": "0 0 * * *"}),
    )
    with pytest.raises(EnvironmentExists) as info:
        world.envs.rename(world.alice, RenameEnvironment.from_json("a", {"new_name": "b"}))
    assert info.value.error == "Cannot rename environment to an existing name"
    assert world.envs.rename(world.alice, RenameEnvironment.from_json("a", {"new_name": "c"})) == 1
    assert world.repo.list_tasks()[0].conda_env == "c"


def test_running_tasks_block_changes_and_delete(world: World) -> None:
    """Install/remove/rename/delete all wait for no running task of the environment."""
    world.envs.create(world.alice, NewEnvironment(name="ml", packages=("six",)))
    created = world.tasks.create_task(
        world.alice,
        NewTask.from_json(
            {"script": "print(1)", "conda_env": "ml", "cron_expression": "0 0 * * *"}
        ),
    )
    task = world.repo.get_task(created.task.id)
    task.status = TaskStatus.RUNNING
    world.repo.update_task(task)
    for action in (
        lambda: world.envs.install(
            world.alice, PackageChange.from_json("ml", {"packages": ["attrs"]})
        ),
        lambda: world.envs.remove(
            world.alice, PackageChange.from_json("ml", {"packages": ["six"]}, names_only=True)
        ),
        lambda: world.envs.rename(
            world.alice, RenameEnvironment.from_json("ml", {"new_name": "ml2"})
        ),
        lambda: world.envs.delete(world.alice, "ml"),
    ):
        with pytest.raises(EnvironmentInUse) as info:
            action()
        assert info.value.referencing_tasks == [created.task.script_path]


def test_failed_install_reports_the_failed_specs(world: World) -> None:
    """A package that cannot be had is named in failed_packages."""
    world.envs.create(world.alice, NewEnvironment(name="ml"))
    with pytest.raises(PackageOperationFailed) as info:
        world.envs.install(
            world.alice, PackageChange.from_json("ml", {"packages": ["six", "nonexistent-pkg>=1"]})
        )
    assert info.value.failed_packages == ["nonexistent-pkg>=1"]
    assert info.value.message == "Failed to install packages"


def test_stats_share_tasks_and_count_packages(world: World) -> None:
    """environment_usage adds to 100 over envs with tasks; package_stats lists every env."""
    for name in ("a", "b", "c"):
        world.envs.create(world.alice, NewEnvironment(name=name))
    for env in ("a", "a", "b"):
        world.tasks.create_task(
            world.alice,
            NewTask.from_json(
                {"script": "print(1)", "conda_env": env, "cron_expression": "0 0 * * *"}
            ),
        )
    stats = world.envs.stats()
    assert stats.total_environments == 3
    assert stats.active_environments == 2
    assert dict(stats.environment_usage) == {"a": 67, "b": 33}
    assert dict(stats.package_stats) == {"a": 2, "b": 2, "c": 2}


@given(st.dictionaries(st.text(min_size=1, max_size=5), st.integers(0, 1000), max_size=12))
def test_integer_shares_always_add_up_to_100(counts: dict[str, int]) -> None:
    """Largest-remainder percents: 100 in total, never off by more than 1 from the truth."""
    shares = integer_shares(counts)
    total = sum(counts.values())
    if total == 0:
        assert shares == []
        return
    assert sum(p for _, p in shares) == 100
    for name, pct in shares:
        assert abs(pct - counts[name] * 100 / total) < 1
    assert {n for n, _ in shares} == {n for n, c in counts.items() if c > 0}


def test_a_made_up_principal_changes_nothing(world: World) -> None:
    """A library caller's hand-made Principal for no stored user is refused before any
    environment is made (it used to leave an orphan environment behind a bare LookupError)."""
    ghost = Principal(user_id=999, username="ghost", is_admin=True)
    with pytest.raises(AuthenticationRequired):
        world.envs.create(ghost, NewEnvironment(name="orphan"))
    with pytest.raises(AuthenticationRequired):
        world.tasks.create_task(ghost, NewTask(script="print(1)", conda_env="orphan2"))
    assert not world.backend.exists("orphan") and not world.backend.exists("orphan2")
