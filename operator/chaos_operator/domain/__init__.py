"""Pure operator logic: spec validation, desired objects (``build_*``), status. No I/O."""
