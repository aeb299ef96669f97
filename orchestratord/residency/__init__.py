"""Models on demand (RES-101..107): which pools are loaded, and when they load and unload."""
