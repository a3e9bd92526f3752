"""The stages of a run (:func:`onnx_poem.api.run` calls them in order), each in its own module."""
