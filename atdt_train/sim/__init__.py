"""The procedural MuJoCo street simulator behind ``atdt_train simulate``.

``domain`` holds the YAML preset schema, ``scene`` builds random streets as MuJoCo models,
``render`` renders RGB, exact depth and class labels, ``command`` writes the dataset layout.
"""
