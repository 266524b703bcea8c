"""Free loopback ports for the servers that benches and tests start: entityd's own picker
(entityd.ports, which `entityd up` uses too), re-exported here so that bench and the tests
keep importing it from bench/."""

from entityd.ports import PORT_HIGH, PORT_LOW, free_port, free_port_range

__all__ = ["PORT_HIGH", "PORT_LOW", "free_port", "free_port_range"]
