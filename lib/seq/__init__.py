"""Sequence models of the chapter "From RNNs to the Transformer": RNN/LSTM/GRU cells, encoder-decoders,
the Transformer, and the reversal-task experiment. Shared blocks (attention, positions) live in :mod:`lib.nn`."""
