"""Where models come from: one open registry of model sources (``sources.models``) and the
weights files they may be given (``sources.weights``)."""
