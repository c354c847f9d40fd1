"""autopeft's built-in method plugins: one module per method, each registered through the
``autopeft`` entry-point group exactly as a third-party plugin is. To add a method, copy the module
of its closest neighbour."""
