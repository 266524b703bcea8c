"""`entityd` whose standard actors include the services actor, for the tests of how its
services end with the process (tests/test_services.py): the same process entry as the
`entityd` console script (entityd.app.cli.main). Once actors/assembly.py registers the
services actor itself this adds nothing.

Run as `python tests/services_entityd.py run --config PATH`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from actors import assembly
from actors.services.actor import ServicesActor
from actors.workspace import Workspace
from entityd import Config
from entityd.app import cli


def with_services(standard: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    def actors(config: Config, *args: Any, **kwargs: Any) -> dict[str, Any]:
        made = standard(config, *args, **kwargs)
        if ServicesActor.name not in made:
            workspace = Workspace(config.workspace_dir, config.name, config.sandbox)
            made[ServicesActor.name] = lambda: ServicesActor(config, workspace)
        return made

    return actors


if __name__ == "__main__":
    assembly.standard_actors = with_services(assembly.standard_actors)  # type: ignore[assignment]
    sys.exit(cli.main())
