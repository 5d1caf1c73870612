"""Sequence models of the chapter "From RNNs to the Transformer": RNN/LSTM/GRU cells (:mod:`lib.seq.rnn`),
encoder-decoders and decoding (:mod:`lib.seq.seq2seq`), the RNN with Bahdanau attention (:mod:`lib.seq.bahdanau`),
the Transformer (:mod:`lib.seq.transformer`), the loop-vs-fused-vs-attention timing (:mod:`lib.seq.bench`) and the
reversal-task experiment (:mod:`lib.seq.reversal`). Shared blocks (attention, positions) live in :mod:`lib.nn`."""
