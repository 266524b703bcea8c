"""The application: the `entityd` and `entityctl` commands, which run a daemon from the
actors in `actors` and drive it. It sits above the runtime library (`entityd`) and the
actors; neither imports it."""
