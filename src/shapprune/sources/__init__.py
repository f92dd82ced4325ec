"""Where models come from: the open registry of model sources (``sources.models``), the
user's own code (``sources.user_code``) and the weights files a model may be given
(``sources.weights``)."""
