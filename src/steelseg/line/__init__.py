"""On the line: the hot folder (:mod:`steelseg.line.watch`) that predicts every image a camera writes, with a
result log that survives a crash. It sits above :mod:`steelseg.inference` and never imports the training stack."""
