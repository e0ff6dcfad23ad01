"""ctm, the Conda Task Manager, as a library.

    import ctm

    with ctm.Ctm.open("/srv/ctm") as app:
        me = app.add_user("alice", "a long password", admin=True)
        app.environments.create(me, ctm.NewEnvironment(name="demo"))
        task = app.tasks.create_task(me, ctm.NewTask(script="print(1)", conda_env="demo")).task
        print(app.wait_for_run(task.id).status)

docs/library.md walks through it; ``Ctm.in_memory()`` gives the same on fakes.
"""

from ctm._library import Ctm
from ctm_adapters.bootstrap import Ports, Services, build_services
from ctm_adapters.clock import FakeClock
from ctm_adapters.settings import Settings, settings_from_env
from ctm_core.commands import (
    Credentials,
    NewEnvironment,
    NewTask,
    NewUser,
    PackageChange,
    Page,
    RenameEnvironment,
)
from ctm_core.errors import CtmError
from ctm_core.models import (
    Environment,
    Execution,
    ExecutionStatus,
    Package,
    Principal,
    Task,
    TaskStatus,
)

__all__ = [
    "Credentials",
    "Ctm",
    "CtmError",
    "Environment",
    "Execution",
    "ExecutionStatus",
    "FakeClock",
    "NewEnvironment",
    "NewTask",
    "NewUser",
    "PackageChange",
    "Package",
    "Page",
    "Ports",
    "Principal",
    "RenameEnvironment",
    "Services",
    "Settings",
    "Task",
    "TaskStatus",
    "build_services",
    "settings_from_env",
]
