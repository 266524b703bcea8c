"""The entity's web page: a thin face over the actor messages entityctl sends, and the
EVENTS stream as server-sent events (README, "The web page")."""
