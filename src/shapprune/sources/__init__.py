"""Where models and data come from: the open registries of model sources
(``sources.models``) and data sources (``sources.data``: zoo datasets, image folders, a
user's Datasets), the user's own code (``sources.user_code``), the weights files a model may
be given (``sources.weights``), image folders as streamed datasets (``sources.folders``) and
the preprocessing a model was trained with (``sources.preprocessing``)."""
