"""The rules of the engine: pure functions that decide, with no I/O."""
