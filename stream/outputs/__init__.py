"""The sink's outputs: each kind of output in its own module, behind :mod:`.base`."""
