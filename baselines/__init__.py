"""Reference localizers for dolos-bench, registered through the public entry-point group like any outside plug-in."""
