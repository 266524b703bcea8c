"""The entity's own services: the services actor (actor.py) runs what the workspace's
services.toml (manifest.py) declares, each revision a snapshot of a commit (snapshot.py)
run in the sandbox (revision.py) behind a loopback preview port (proxy.py), restarted and
reloaded by its service loop (service.py); its messages (messages.py) and the
orchestrator's tools (tools.py).

Importing the package loads nothing: entityctl imports the messages alone."""
