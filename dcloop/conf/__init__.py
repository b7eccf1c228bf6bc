"""dcloop's Hydra configs (a package, so that ``initialize_config_module("dcloop.conf")``
finds them)."""
