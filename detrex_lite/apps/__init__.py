"""What the picture and analysis tools do, one module per tool (``tools/demo.py`` ->
``detrex_lite.apps.demo``...): the tools parse their arguments and call the ``run`` function here,
so tests and other programs call the same code without the command line."""
