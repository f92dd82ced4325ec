"""The zoo: small models, the data sets (MNIST 5k embedded), training, and the model cache."""
