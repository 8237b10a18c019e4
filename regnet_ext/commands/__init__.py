"""Sub-commands of `regnet-ext`, one module each (discovered by regnet_ext.cli)."""
